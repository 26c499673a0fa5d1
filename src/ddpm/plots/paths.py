"""The VP-versus-flow paths figure (``python -m ddpm.plots paths``): how x moves from noise to data under the VP chain
and under flow matching, on ``data=gaussians8``, whose exact denoiser is known, so nothing is trained.

Two rows, one column per process, the same noise eps (N, 2) and data x0 (N, 2) in both columns:

    1. conditional paths: x_t = alpha(t) x0 + sigma(t) eps of one (x0, eps) pair over t, what the network is trained
       to follow (Lipman et al. 2023, "Flow Matching", Sec. 4.1 and Fig. 3): flow's (1 - t) x0 + t eps is a
       segment (straightness 1); VP's sqrt(abar) x0 + sqrt(1 - abar) eps is an arc of an ellipse
    2. probability-flow ODE paths of the exact mixture denoiser E[x0 | x_t] (``evaluation.mixture``) from x_T = eps,
       Heun's solver (Karras et al. 2022, Algorithm 1), its states recorded (``evaluation.paths``). These average
       the conditional paths over the posterior of x0; in the scaled-back variable x / alpha both processes follow
       the same ODE in the noise level nu (Karras et al. 2022, Sec. 4, Eq. 4), so their marginal paths differ
       only by the factor alpha_flow / alpha_vp = sqrt(1 + nu^2) / (1 + nu), in [1/sqrt 2, 1]

Each panel's title has the mean straightness |x_end - x_start| / path length (1 = straight) of its N paths.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.data.points import gaussians8
from ddpm.diffusion.ode_samplers import HeunSampler
from ddpm.diffusion.processes import GaussianProcess
from ddpm.errors import ConfigError
from ddpm.evaluation.mixture import gaussians8_posterior_mean
from ddpm.evaluation.paths import ode_paths, straightness


def conditional_paths(process: GaussianProcess, times: list[float], x0: Tensor, eps: Tensor) -> Tensor:
    """1. (S + 1, N, D): x_t = alpha(t) x0 + sigma(t) eps at each of ``times`` (S,), then x0 itself (the clean end)."""
    t = torch.tensor(times, dtype=torch.float64)  # (S,)
    states = [process.add_noise(x0.double(), eps.double(), t_i.expand(len(x0))) for t_i in t]  # S x (N, D)
    return torch.stack([*states, x0.double()])


def all_paths(processes: dict[str, GaussianProcess], num_paths: int = 48, steps: int = 40,
              seed: int = 0) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
    """(data (2000, 2), {process name: {"conditional": paths, "ode": paths}}), paths (S, N, 2) float64: the N
    pairs (x0, eps) and the ODE from x_T = eps with ``steps`` Heun steps, the same in every column."""
    if num_paths < 1 or steps < 1:
        raise ConfigError(f"--paths {num_paths} --steps {steps}: need at least one path and one step")
    g = torch.Generator().manual_seed(seed)
    data = gaussians8(2000, g)  # (2000, 2), the grey backdrop
    x0 = gaussians8(num_paths, g).double()  # (N, 2)
    eps = torch.randn(num_paths, 2, generator=g, dtype=torch.float64)  # (N, 2)
    solver = HeunSampler(steps=steps)
    out = {}
    for name, process in processes.items():
        times, ode = ode_paths(solver, gaussians8_posterior_mean(process), process, eps)
        out[name] = {"conditional": conditional_paths(process, times, x0, eps), "ode": ode}
    return data, out


def paths_figure(data: Tensor, paths: dict[str, dict[str, Tensor]], steps: int) -> Figure:
    """The 2 x P panels of the module docstring; ``paths`` as ``all_paths`` returns them."""
    rows = {"conditional": r"conditional $x_t = \alpha_t x_0 + \sigma_t \epsilon$ (the training targets)",
            "ode": f"PF-ODE of the exact denoiser ({steps} Heun steps)"}
    fig = Figure(figsize=(5.0 * len(paths), 10.4), layout="constrained")
    axes = fig.subplots(2, len(paths), squeeze=False)
    for col, (name, kinds) in enumerate(paths.items()):
        for row, (kind, label) in enumerate(rows.items()):
            ax, p = axes[row, col], kinds[kind]  # p (S, N, 2)
            ax.scatter(data[:, 0], data[:, 1], s=2, color="0.8", rasterized=True)
            for i in range(p.shape[1]):
                ax.plot(p[:, i, 0], p[:, i, 1], color=f"C{i % 10}", linewidth=0.8, alpha=0.85)
            ax.scatter(p[0, :, 0], p[0, :, 1], s=10, color="k", zorder=3)
            ax.scatter(p[-1, :, 0], p[-1, :, 1], s=14, color="C3", edgecolors="k", linewidths=0.4, zorder=4)
            ax.set(xlim=(-2.6, 2.6), ylim=(-2.6, 2.6), aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
            ax.set_title(f"{name}: {label}\nmean straightness {straightness(p).mean():.3f}", fontsize=9)
    fig.suptitle(f"{p.shape[1]} paths from noise (black) to data (red, gaussians8), the same in both columns\n"
                 "straightness = |end - start| / path length (1 = straight)", fontsize=10)
    return fig
