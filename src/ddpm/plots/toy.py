"""The 2-D toy figures that ``ddpm.training.callbacks.toy_plots.ToyPlots`` draws: samples over the
data, the learned score as a vector field, and reverse trajectories. Points are (N, 2) tensors."""

from __future__ import annotations

from typing import Callable

import torch
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from ddpm.diffusion.schedules import NoiseSchedule

LIMITS = (-1.3, 1.3)  # the toy point sets lie in [-1, 1]^2


def _draw_data(ax, data: Tensor, limits: tuple[float, float] = LIMITS) -> None:
    """The data (N, 2) as light grey dots on square axes."""
    ax.scatter(data[:, 0], data[:, 1], s=3, color="0.78", label="data", rasterized=True)
    ax.set(xlim=limits, ylim=limits, aspect="equal", xlabel="$x_1$", ylabel="$x_2$")


def _dot(color, label: str, size: float = 6, **kwargs) -> Line2D:
    """A legend entry for a scatter of small dots, drawn large enough to see."""
    marker = kwargs.pop("marker", "o")
    return Line2D([], [], linestyle="", marker=marker, markersize=size, color=color, label=label, **kwargs)


def points_figure(
    data: Tensor,
    panels: dict[str, Tensor],
    distance: Callable[[Tensor, Tensor], float],
    references: dict[str, float],
) -> Figure:
    """One panel per named sample set (N, 2) over the data, with its distance to the data.

    ``references`` are the distances of reference sets (another draw of the data, pure noise),
    printed in the figure title so the numbers can be read.
    """
    fig = Figure(figsize=(5.2 * len(panels), 5.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mean, data_spread = data.mean(dim=0), data.std(dim=0).norm().item()
    for ax, (name, x), color in zip(axes, panels.items(), ("C0", "C3", "C2")):
        _draw_data(ax, data)
        ax.scatter(*mean, marker="x", s=60, color="k", linewidths=1.5, zorder=3)
        ax.scatter(x[:, 0], x[:, 1], s=3, color=color, rasterized=True, zorder=4)
        spread = x.std(dim=0).norm().item()
        if spread < 0.1 * data_spread:  # a collapsed sample is a dot: point at it
            ax.annotate(
                f"all {len(x)} samples", xy=x.mean(dim=0).tolist(), xytext=(0.55, 0.12), textcoords="axes fraction",
                arrowprops={"arrowstyle": "->", "color": color}, color=color, fontsize=11,
            )
        ax.set_title(f"{name}\ndistance to data {distance(x, data):.3f}, spread {spread:.2f}")
        handles = [_dot("0.7", "data"), _dot(color, "samples"), _dot("k", "mean of the data", marker="x", mew=1.5)]
        ax.legend(handles=handles, loc="upper left", fontsize=9)
    refs = ", ".join(f"{name} {value:.3f}" for name, value in references.items())
    fig.suptitle(
        f"distance = mean nearest-neighbour distance, both ways\nreference distances: {refs}\n"
        f"spread = √(Var x₁ + Var x₂); the data's is {data_spread:.2f}",
        fontsize=9,
    )
    return fig


def vector_field_figure(
    score: Callable[[Tensor, int], Tensor], times: list[int], schedule: NoiseSchedule, data: Tensor, n: int = 21
) -> Figure:
    """The direction of the score ``score(x, t)`` (N, 2) on an n x n grid at each t, coloured by its size."""
    titles = [rf"t = {t}   ($\sqrt{{\bar\alpha_t}}$ = {schedule.sqrt_alphas_cumprod[t].item():.2f})" for t in times]
    suptitle = (r"Learned score $\nabla_x \log p_t(x) = -\hat\epsilon(x, t) / \sqrt{1-\bar\alpha_t}$"
                " (grey: the data): arrows show its direction, colour its size")
    return field_figure(score, times, titles, data, r"$|\hat\epsilon|\,/\,\sqrt{1-\bar\alpha_t}$", suptitle, n)


def field_figure(
    field: Callable[[Tensor, float], Tensor], times: list, titles: list[str], data: Tensor, colorbar: str,
    suptitle: str, n: int = 21,
) -> Figure:
    """The direction of ``field(x, t)`` (N, 2) on an n x n grid over [-1.5, 1.5]^2, one panel per t, coloured by its
    size on one log scale for all panels."""
    lin = torch.linspace(-1.5, 1.5, n)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # (n*n, 2)
    fields = [field(grid, t) for t in times]
    norms = torch.cat([f.norm(dim=1) for f in fields])
    color_norm = LogNorm(vmin=norms.min().clamp(min=1e-3).item(), vmax=norms.max().item())
    cmap = colormaps["viridis"].resampled(10)  # a few distinct colours read better than a gradient
    fig = Figure(figsize=(3.6 * len(times) + 1.2, 4.3), layout="constrained")
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    for ax, s, title in zip(axes, fields, titles):
        ax.scatter(data[:, 0], data[:, 1], s=2, color="0.8", rasterized=True)
        length = s.norm(dim=1, keepdim=True).clamp(min=1e-12)
        u = s / length  # unit arrows: the size spans orders of magnitude across t, so it is the colour
        quiver = ax.quiver(
            grid[:, 0], grid[:, 1], u[:, 0], u[:, 1], length[:, 0], cmap=cmap, norm=color_norm,
            angles="xy", scale_units="xy", scale=1 / 0.11, width=0.006,
        )
        ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xlabel="$x_1$")
        ax.set_title(title)
    axes[0].set_ylabel("$x_2$")
    fig.colorbar(quiver, ax=axes, label=colorbar, shrink=0.85, pad=0.01)
    fig.suptitle(suptitle)
    return fig


def trajectories_figure(states: list[Tensor], times: list[int], data: Tensor, num_paths: int) -> Figure:
    """The sampled points at each of ``times`` and at the end; the first ``num_paths`` points are
    drawn large, with their path since the previous panel.

    ``states`` are T + 1 tensors (N, 2): states[k] is x_t for t = T - 1 - k, the input of the
    sampler's step at t, and states[T] is its output.
    """
    T = len(states) - 1
    panels = [(f"t = {t}", T - 1 - t) for t in times] + [("output $x_0$", T)]
    suptitle = f"Reverse process: {len(states[0])} points from $x_T \\sim N(0, I)$ through {T} sampler steps"
    return path_panels_figure(states, panels, data, num_paths, suptitle)


def path_panels_figure(
    states: list[Tensor], panels: list[tuple[str, int]], data: Tensor, num_paths: int, suptitle: str
) -> Figure:
    """One panel per (title, k): the points states[k] (N, 2), and the first ``num_paths`` drawn large with their
    path since the previous panel; ``states`` are a sampler's successive x (N, 2), noise first."""
    paths = torch.stack([x[:num_paths] for x in states], dim=1)  # (num_paths, S, 2)
    fig = Figure(figsize=(3.5 * len(panels), 4.3), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    previous = 0
    for ax, (title, k) in zip(axes, panels):
        _draw_data(ax, data, limits=(-2.5, 2.5))
        ax.scatter(states[k][:, 0], states[k][:, 1], s=2, color="C0", alpha=0.4, rasterized=True)
        for i, path in enumerate(paths):
            color = f"C{(i + 1) % 10}"
            ax.plot(path[previous : k + 1, 0], path[previous : k + 1, 1], color=color, linewidth=0.9)
            ax.scatter(*path[k], s=40, color=color, edgecolors="k", linewidths=0.8, zorder=3)
        ax.set_title(title)
        previous = k
    few = "a few of them, with\ntheir path since the\nprevious panel"
    handles = [
        _dot("0.7", "data"),
        _dot("C0", "sampled points", alpha=0.6),
        Line2D([], [], color="C1", marker="o", markeredgecolor="k", label=few),
    ]
    axes[0].legend(handles=handles, loc="upper left", fontsize=8)
    fig.suptitle(suptitle)
    return fig
