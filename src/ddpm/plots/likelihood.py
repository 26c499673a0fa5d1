"""Where the bits go: the variational bound's per-timestep terms L_t, as a figure and a table.

``evaluate.py metrics=[nll]`` measures the bound (Ho et al. 2020, Eq. 5) on test images; the total
is the prior L_T plus T terms, ``terms[0]`` the discretized decoder -log p(x_0|x_1) and ``terms[t]``
the KL of the reverse step out of t. Improved DDPM (Nichol & Dhariwal 2021, Fig. 2) draws the same
curve: the first few steps hold most of the bound, which is why a learned variance there pays off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ddpm.plots.figures import save_figure


def bound_by_range(terms: Sequence[float], ranges: int = 10) -> dict[str, float]:
    """The per-t terms (T,) summed over ``ranges`` equal ranges of t, e.g. {"0-99": 3.1, ...} (bits/dim)."""
    terms = np.asarray(terms, dtype=np.float64)
    edges = np.linspace(0, len(terms), min(ranges, len(terms)) + 1).round().astype(int)
    return {f"{lo}-{hi - 1}": float(terms[lo:hi].sum()) for lo, hi in zip(edges[:-1], edges[1:])}


def bound_figure(terms: Sequence[float], prior: float, title: str = "") -> Figure:
    """Two panels over t: the term L_t in bits/dim (log scale) and the share of the bound held by the
    steps 0..t (the prior L_T counted at the end)."""
    terms = np.asarray(terms, dtype=np.float64)  # (T,)
    total = terms.sum() + prior
    fig = Figure(figsize=(9, 3.4), dpi=100)
    left, right = fig.subplots(1, 2)
    left.semilogy(np.arange(len(terms)), np.maximum(terms, 1e-12), lw=1)
    left.set(xlabel="t", ylabel="L_t (bits/dim)", title="per-step term (t = 0: decoder)")
    right.plot(np.arange(len(terms)), np.cumsum(terms) / total, lw=1)
    right.set(xlabel="t", ylabel="share of the bound", ylim=(0, 1.02),
              title=f"steps 0..t of {total:.3f} bits/dim (prior {prior:.1e})")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_bound_terms(terms: Sequence[float], prior: float, out_dir: Path, title: str = "") -> dict[str, str]:
    """``nll_terms.csv`` (t, L_t bits/dim) and ``nll_terms.png`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "nll_terms.csv"
    rows = "".join(f"{t},{value:.9g}\n" for t, value in enumerate(terms))
    table.write_text("t,bits_per_dim\n" + rows)
    picture = out_dir / "nll_terms.png"
    save_figure(bound_figure(terms, prior, title), picture)
    return {"nll_terms_csv": str(table), "nll_terms_png": str(picture)}
