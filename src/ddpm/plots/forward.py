"""The forward process q(x_t | x_0) drawn: one image noised by several schedules, and a 1-D
distribution drifting to N(0, 1).

Every noised sample comes from ``NoiseSchedule.q_sample``; nothing here re-derives a schedule formula.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.diffusion import schedules
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.plots.schedules import get_schedule

# Where the image figure's columns sit, as fractions of T.
FORWARD_FRACTIONS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def forward_figure(x0: Tensor, names: list[str], fractions: list[float], seed: int = 0) -> Figure:
    """x_t = q_sample(x_0, t, eps) of one image x0 (C, H, W) for each named schedule (rows) at
    t = min(round(f T), T - 1) for each fraction f (columns), one eps for all."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))  # the same noise everywhere
    fig = Figure(figsize=(1.6 * len(fractions) + 0.6, 2.05 * len(names) + 0.5), layout="constrained")
    axes = fig.subplots(len(names), len(fractions), squeeze=False)
    for row, name in zip(axes, names):
        schedule = get_schedule(name)
        for ax, f in zip(row, fractions):
            t = torch.tensor([min(round(f * schedule.num_timesteps), schedule.num_timesteps - 1)])
            x_t = schedule.q_sample(x0[None], t, eps[None])[0]  # (C, H, W)
            img = ((x_t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t.item()}", fontsize=10)
            ax.set_xlabel(rf"$\sqrt{{\bar\alpha_t}}$={schedule.sqrt_alphas_cumprod[t].item():.2f}", fontsize=9)
        row[0].set_ylabel(name, fontsize=10)
    fig.suptitle(
        r"Forward process $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$"
        r" (the same $\epsilon$ in every panel; shown clipped to [-1, 1])"
    )
    return fig


def bimodal(num: int, generator: torch.Generator) -> Tensor:
    """(num,) draws of x_0 ~ 0.3 N(-0.5, 0.08^2) + 0.7 N(0.5, 0.08^2): mean 0.2, variance 0.22, far from N(0, 1)."""
    mode = torch.where(torch.rand(num, generator=generator) < 0.3, -0.5, 0.5)
    return mode + 0.08 * torch.randn(num, generator=generator)


def forward1d_figure(beta: float, num: int = 20_000, seed: int = 0) -> Figure:
    """Histograms of x_t at several t for a fixed beta and the linear schedule, and Var[x_t] over t."""
    g = torch.Generator().manual_seed(seed)
    linear = schedules.linear()
    fixed = NoiseSchedule(torch.full((linear.num_timesteps,), beta))
    runs = {f"fixed β = {beta:g}": fixed, "linear β 1e-4…0.02": linear}
    x0 = bimodal(num, g)[None]  # (1, N): N draws of a scalar, as one item of a batch
    eps = torch.randn(x0.shape, generator=g)
    eps = (eps - eps.mean()) / eps.std()  # moments exactly 0 and 1, so Var[x_t] visibly ends at 1
    times = [0, 25, 100, 200, 350, 500, 999]
    grid = np.linspace(-4, 4, 200)
    normal = np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi)  # the N(0, 1) the process ends at

    fig = Figure(figsize=(16, 9), layout="constrained")
    rows = fig.subfigures(2, 1, height_ratios=[2, 1.1])
    hist_axes = rows[0].subplots(len(runs), len(times), sharex=True, sharey=True)
    var_ax, mean_ax = rows[1].subplots(1, 2)
    t_every = torch.arange(0, linear.num_timesteps, 5)
    for (label, schedule), axes, color in zip(runs.items(), hist_axes, ("C3", "C0")):
        for ax, t_int in zip(axes, times):
            x_t = schedule.q_sample(x0, torch.tensor([t_int]), eps)[0]  # (N,)
            ax.hist(x_t.numpy(), bins=80, range=(-4, 4), density=True, color=color, alpha=0.75)
            ax.plot(grid, normal, color="k", linestyle="--", linewidth=1)
            ax.set_title(rf"t={t_int}, $\bar\alpha_t$={schedule.alphas_cumprod[t_int]:.2g}", fontsize=10)
            ax.set_xlabel("$x_t$")
        axes[0].set_ylabel(f"{label}\ndensity")
        x_all = schedule.q_sample(x0.expand(len(t_every), -1), t_every, eps.expand(len(t_every), -1))  # (K, N)
        var_ax.plot(t_every, x_all.var(dim=1), color=color, label=label)
        mean_ax.plot(t_every, x_all.mean(dim=1), color=color, label=label)
    hist_axes[0, -1].plot([], [], color="k", linestyle="--", label="N(0, 1)")
    hist_axes[0, -1].legend(loc="upper right", fontsize=9)
    rows[0].suptitle(r"$q(x_t)$: a bimodal $x_0$ drifts to N(0, 1) (the same $x_0$ and $\epsilon$ for both schedules)")
    var_ax.axhline(1, color="k", linestyle="--", linewidth=1, label="N(0, 1)")
    var_ax.set(title=r"Var[$x_t$]: from Var[$x_0$] = 0.22 up to 1", xlabel="timestep t", ylabel="variance")
    mean_ax.axhline(0, color="k", linestyle="--", linewidth=1, label="N(0, 1)")
    mean_ax.set(title=r"E[$x_t$]: from E[$x_0$] = 0.2 down to 0", xlabel="timestep t", ylabel="mean")
    for ax in (var_ax, mean_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
