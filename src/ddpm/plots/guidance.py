"""Classifier-free guidance on 2-D data where the class is the mode (``data=gaussians8``): the
unconditional, the conditional and the guided field at a few t, and guided samples at several scales.

A denoiser pulls x_t toward the data: its x0_hat(x_t, t) is the mean of the clean points that could
have been noised into x_t (Tweedie's formula, Efron 2011). The unconditional model pulls toward
the whole data set, a conditional one toward one class, and classifier-free guidance (Ho & Salimans
2022) at scale s predicts eps_u + s (eps_c - eps_u), i.e. x0_hat_u + s (x0_hat_c - x0_hat_u): it
follows the difference between the two, past the class and away from the average (s = 1 + w; s = 0
is the unconditional model, s = 1 the conditional one).

Points are (N, 2) tensors, labels (N,) int64.
"""

from __future__ import annotations

import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from torch import Tensor

from ddpm.diffusion.denoiser import Denoiser, at_timestep
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.samplers import DDPMSampler
from ddpm.evaluation.mixture import fraction_on_mode
from ddpm.evaluation.sampling import balanced_labels
from ddpm.plots.toy import _dot

FIELD_FRACTIONS = (0.9, 0.5, 0.2, 0.05)  # t / T of the field columns
SAMPLE_SCALES = (0.0, 1.0, 3.0, 7.0)  # guidance scales of the sample row
ARROW = 0.16  # length of the (unit-direction) arrows in data units
LIMITS = (-1.5, 1.5)


def _class_colors(num_classes: int) -> list:
    """One colour per class, from the qualitative tab10 palette (K <= 10) or hsv."""
    cmap = colormaps["tab10"] if num_classes <= 10 else colormaps["hsv"].resampled(num_classes + 1)
    return [cmap(k) for k in range(num_classes)]


def _draw_classes(ax, data: Tensor, labels: Tensor, colors: list, alpha: float = 0.25, size: float = 2) -> None:
    """The points (N, 2) in their class colours on square axes."""
    ax.scatter(data[:, 0], data[:, 1], s=size, c=[colors[k] for k in labels.tolist()], alpha=alpha, rasterized=True)
    ax.set(xlim=LIMITS, ylim=LIMITS, aspect="equal", xticks=[-1, 0, 1], yticks=[-1, 0, 1])


def pull_field(denoiser, points: Tensor, t_int: int, cond: Tensor | None) -> Tensor:
    """x0_hat(x, t) - x (N, 2) at the points x (N, 2): the arrow from x to the denoiser's clean point."""
    return (at_timestep(denoiser, points, t_int, cond).x0 - points).cpu()


@torch.no_grad()
def guided_samples(guided: ClassifierFreeGuidance, labels: Tensor, sampler=None, seed: int = 0) -> Tensor:
    """(N, 2) samples of the guided denoiser for the class labels (N,), from x_T drawn with ``seed``
    (the same x_T and noise at every scale); ``sampler`` defaults to DDPM over all T steps."""
    sampler = sampler or DDPMSampler()
    generator = torch.Generator(device=labels.device).manual_seed(seed)
    x_T = torch.randn((len(labels), 2), generator=generator, device=labels.device)
    return sampler(guided, guided.denoiser.schedule, x_T, generator, cond=labels).cpu()


def _grid(n: int, device) -> Tensor:
    """(n*n, 2) points of an n x n grid inside the axes limits."""
    lin = torch.linspace(LIMITS[0] + 0.1, LIMITS[1] - 0.1, n)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1).to(device)


def _draw_fields(axes, fields: list[list[Tensor]], grid: Tensor, data: Tensor, data_labels: Tensor, colors: list):
    """Unit arrows of every field (n*n, 2) over the data, one row of axes per model, coloured by
    length on one shared log scale; returns the last quiver, for the colour bar."""
    lengths = torch.cat([d.norm(dim=1) for row in fields for d in row])
    norm = LogNorm(vmin=lengths.min().clamp(min=1e-2).item(), vmax=lengths.max().item())
    cmap = ListedColormap(colormaps["Greys"](torch.linspace(0.4, 1.0, 7).tolist()))  # greys: the classes are colours
    grid = grid.cpu()
    for row_axes, row in zip(axes, fields):
        for ax, d in zip(row_axes, row):
            _draw_classes(ax, data, data_labels, colors)
            length = d.norm(dim=1, keepdim=True)
            u = d / length.clamp(min=1e-12)  # unit arrows: the length spans two decades, so it is the colour
            quiver = ax.quiver(
                grid[:, 0], grid[:, 1], u[:, 0], u[:, 1], length[:, 0], cmap=cmap, norm=norm,
                angles="xy", scale_units="xy", scale=1 / ARROW, width=0.006,
            )
    return quiver


@torch.no_grad()
def guidance_figure(
    denoiser: Denoiser,
    data: Tensor,
    data_labels: Tensor,
    centres: Tensor,
    label: int = 0,
    scale: float = 3.0,
    fractions: tuple[float, ...] = FIELD_FRACTIONS,
    sample_scales: tuple[float, ...] = SAMPLE_SCALES,
    samples_per_class: int = 250,
    sampler=None,
    seed: int = 0,
    grid_size: int = 15,
    **guidance,
) -> Figure:
    """Rows 1-3: the pull x0_hat(x_t, t) - x_t of the unconditional model (s = 0), of the
    conditional model for class ``label`` (s = 1) and of the guided one (s = ``scale``),
    drawn on a grid over [-1.5, 1.5]^2 as arrows of one length showing its direction, coloured by its
    size (shared colour scale, as in ``ddpm.plots.toy.vector_field_figure``), one column per
    t = round(f (T - 1)) for f in ``fractions``, over the data (N, 2) coloured by ``data_labels`` (N,).
    Row 4: ``samples_per_class`` samples of every class guided at each of ``sample_scales``,
    coloured by the requested class, with the fraction whose nearest centre (K, 2) is that class.

    ``denoiser`` is a class-conditional ``Denoiser`` (labels 0..K-1 the modes, K the null class),
    of a trained network or of the exact one (``ddpm.evaluation.mixture``); it is guided by
    ``ClassifierFreeGuidance(denoiser, K, scale=s, **guidance)`` (``guidance``: interval, rescale).
    The fields are the network's own x0_hat (the denoiser with ``clip_denoised=False``, as the toy
    field: clipping would bend the arrows wherever x0_hat leaves [-1, 1]^2); the samples are drawn
    with the denoiser as given (as trained and configured), by ``sampler`` (default DDPM).
    ``data`` lies on the model's device.
    """
    num_classes, schedule, device = len(centres), denoiser.schedule, data.device
    unclipped = denoiser.replace(clip_denoised=False)
    times = [round(f * (schedule.num_timesteps - 1)) for f in fractions]
    colors = _class_colors(num_classes)
    rows = {
        "unconditional\n$s = 0$": 0.0,
        f"conditional, class {label}\n$s = 1$": 1.0,
        f"guided, class {label}\n$s = {scale:g}$": scale,
    }
    width = max(len(times), len(sample_scales))
    fig = Figure(figsize=(2.9 * width + 0.6, 2.9 * (len(rows) + 1) + 0.9), layout="constrained")
    axes = fig.subplots(len(rows) + 1, width, squeeze=False)

    grid = _grid(grid_size, device)  # (n*n, 2)
    cond = torch.full((len(grid),), label, dtype=torch.long, device=device)
    fields = [
        [pull_field(ClassifierFreeGuidance(unclipped, num_classes, scale=s, **guidance), grid, t, cond) for t in times]
        for s in rows.values()
    ]
    data, data_labels = data.cpu(), data_labels.cpu()
    quiver = _draw_fields(axes, fields, grid, data, data_labels, colors)
    for ax, t, f in zip(axes[0], times, fractions):
        signal = rf"$\sqrt{{\bar\alpha_t}}$ = {schedule.abar(t) ** 0.5:.2f}"
        ax.set_title(rf"$t = {t}$  ($t/T$ = {f:g}, {signal})", fontsize=10)
    for row_axes, name in zip(axes, rows):
        row_axes[0].set_ylabel(name, fontsize=11)
    for ax in axes[1 : len(rows), : len(times)].flatten():
        ax.scatter(*centres[label].tolist(), marker="*", s=220, color=colors[label], edgecolors="k", zorder=4)
    fig.colorbar(quiver, ax=axes[:-1], label=r"$|\hat x_0(x_t, t) - x_t|$", shrink=0.6, pad=0.01)

    labels = balanced_labels(num_classes * samples_per_class, num_classes).to(device)  # 0, 1, .., K-1, 0, ..
    for ax, s in zip(axes[-1], sample_scales):
        x = guided_samples(ClassifierFreeGuidance(denoiser, num_classes, scale=s, **guidance), labels, sampler, seed)
        _draw_classes(ax, data, data_labels, ["0.8"] * num_classes, alpha=1.0, size=1)
        _draw_classes(ax, x, labels.cpu(), colors, alpha=0.6, size=3)
        on_mode = 100 * fraction_on_mode(x, labels.cpu(), centres)
        ax.set_title(f"$s = {s:g}$: {on_mode:.1f}% on the\nrequested mode", fontsize=10)
    axes[-1, 0].set_ylabel("guided samples,\nall classes", fontsize=11)
    for row_axes, used in [*((row, len(times)) for row in axes[:-1]), (axes[-1], len(sample_scales))]:
        for ax in row_axes[used:]:
            ax.set_visible(False)

    handles = [_dot(colors[k], f"class {k}") for k in range(num_classes)]
    handles.append(_dot(colors[label], f"mode of class {label}", size=12, marker="*", markeredgecolor="k"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 9), fontsize=9)
    fig.suptitle(
        r"Classifier-free guidance: arrows from $x_t$ toward the denoiser's $\hat x_0(x_t, t)$"
        " (direction; shade: distance)\n"
        r"guided: $\hat\epsilon = \hat\epsilon_u + s\,(\hat\epsilon_c - \hat\epsilon_u)$, i.e. "
        r"$\hat x_0 = \hat x_{0,u} + s\,(\hat x_{0,c} - \hat x_{0,u})$",
        fontsize=12,
    )
    return fig
