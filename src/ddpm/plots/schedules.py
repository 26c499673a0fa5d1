"""Pictures of diffusion, drawn from the same schedule code that trains the models.

    python -m ddpm.plots schedules [--schedules linear cosine ...] [--out DIR]
    python -m ddpm.plots forward [--image digits|mnist|china|flower|PATH] [--root DIR] [--size 64] [--out DIR]
    python -m ddpm.plots forward1d [--beta 0.01] [--out DIR]

Every curve is a buffer of a ``NoiseSchedule`` and every noised sample comes from its
``q_sample``; nothing here re-derives a schedule formula. Figures use matplotlib's object API on
the Agg canvas (no pyplot, so importing this module never switches a notebook's backend). The
2-D toy figures drawn by ``ddpm.toy.ToyPlots`` live here too.
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from torch import Tensor

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError, report_config_errors
from ddpm.diffusion.schedules import NoiseSchedule

# The schedules by name: those of conf/schedule/*.yaml with their defaults, and two bad ones.
SCHEDULES: dict[str, Callable[[], NoiseSchedule]] = {
    "linear": schedules.linear,
    "cosine": schedules.cosine,
    "scaled_linear": schedules.scaled_linear,
    "quadratic": schedules.quadratic,
    "sigmoid": schedules.sigmoid,
    # abar_T = 0.08: x_T keeps 29% of the image, so sampling from N(0, I) starts off the training distribution.
    "too_little_noise": functools.partial(schedules.linear, beta_start=1e-3, beta_end=4e-3),
    # abar_t < 1e-3 from t = 293 on: 70% of the steps see pure noise, and step 0 already removes 1% of the signal.
    "too_much_noise": functools.partial(schedules.linear, beta_start=1e-2, beta_end=0.1),
}
DEFAULT_SCHEDULES = ["linear", "cosine", "scaled_linear", "too_little_noise", "too_much_noise"]


def get_schedule(name: str) -> NoiseSchedule:
    if name not in SCHEDULES:
        raise ConfigError(f"schedule {name!r} is not known: choose from {sorted(SCHEDULES)}")
    return SCHEDULES[name]()


def describe(name: str, schedule: NoiseSchedule) -> str:
    """A legend entry: the name, the beta range, T and the abar_T that decides whether x_T ~ N(0, I)."""
    b = schedule.betas
    abar_T = schedule.alphas_cumprod[-1].item()
    return rf"{name}: $\beta$ {b[0]:.0e}…{b[-1]:.2g}, T={schedule.num_timesteps}, $\bar\alpha_T$={abar_T:.1g}"


def save_figure(fig: Figure, path: Path) -> Tensor:
    """Render ``fig`` once on the Agg canvas (at ``fig.dpi``), write it as a PNG and return the same
    picture as a (3, H, W) tensor in [0, 1], for the logger."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


# ---- schedules ------------------------------------------------------------------------------------


def schedule_curves(schedule: NoiseSchedule) -> dict[str, Tensor]:
    """The curves the schedules figure draws, each read from the schedule's buffers, as float64."""
    curves = {
        "beta": schedule.betas,
        "alpha_bar": schedule.alphas_cumprod,
        "signal": schedule.sqrt_alphas_cumprod,
        "noise": schedule.sqrt_one_minus_alphas_cumprod,
        "log_snr": schedule.snr.log(),
    }
    return {k: v.detach().double().cpu() for k, v in curves.items()}


def schedules_figure(names: list[str]) -> Figure:
    """beta_t, abar_t, sqrt(abar_t) and sqrt(1 - abar_t), log SNR(t) for each named schedule, overlaid."""
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    (ax_beta, ax_abar), (ax_scale, ax_snr) = fig.subplots(2, 2)
    colors = [f"C{i}" for i in range(len(names))]
    lowest = 0.0
    for name, color in zip(names, colors):
        schedule = get_schedule(name)
        c = schedule_curves(schedule)
        t = np.arange(schedule.num_timesteps)
        label = describe(name, schedule)
        ax_beta.plot(t, c["beta"], color=color, label=label)
        ax_abar.plot(t, c["alpha_bar"], color=color, label=label)
        ax_scale.plot(t, c["signal"], color=color)
        ax_scale.plot(t, c["noise"], color=color, linestyle="--")
        ax_snr.plot(t, c["log_snr"], color=color)
        ax_abar.plot(t[-1], c["alpha_bar"][-1], "o", color=color)
        lowest = min(lowest, c["log_snr"].min().item())
    ax_beta.set(yscale="log", title=r"$\beta_t$: noise variance added at step $t$", ylabel=r"$\beta_t$ (log scale)")
    ax_abar.set(
        title=r"$\bar\alpha_t = (1-\beta_0) \cdots (1-\beta_t)$: signal variance kept in $x_t$",
        ylabel=r"$\bar\alpha_t$",
        ylim=(-0.02, 1.02),
    )
    ax_abar.axhline(0, color="k", linewidth=0.8)
    ax_abar.annotate(
        r"$\bar\alpha_T$ (dots) must reach ≈ 0, so that $x_T \sim N(0, I)$"
        "\nand sampling can start from pure noise",
        xy=(0.97, 0.68), xycoords="axes fraction", ha="right", fontsize=10,
        bbox={"boxstyle": "round", "facecolor": "lightyellow", "edgecolor": "0.6"},
    )
    ax_scale.set(
        title=r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$: signal and noise scales",
        ylabel="scale",
        ylim=(-0.02, 1.02),
    )
    ax_scale.plot([], [], color="0.3", label=r"signal $\sqrt{\bar\alpha_t}$")
    ax_scale.plot([], [], color="0.3", linestyle="--", label=r"noise $\sqrt{1-\bar\alpha_t}$")
    ax_scale.legend(loc="center right")
    bottom = max(lowest, -25.0)  # one extreme schedule would squash the rest
    ax_snr.set(
        title=r"$\log \mathrm{SNR}(t) = \log(\bar\alpha_t\,/\,(1-\bar\alpha_t))$",
        ylabel="log SNR (natural log)",
        ylim=(bottom - 1, None),
    )
    if bottom > lowest:
        note = f"axis cut at {bottom:g}: the lowest curve ends at {lowest:.0f}"
        ax_snr.text(0.98, 0.04, note, transform=ax_snr.transAxes, ha="right", fontsize=9, color="0.3")
    ax_snr.axhline(0, color="k", linewidth=0.8)
    for ax in (ax_beta, ax_abar, ax_scale, ax_snr):
        ax.set_xlabel("timestep t")
        ax.grid(alpha=0.3)
    fig.legend(*ax_beta.get_legend_handles_labels(), loc="outside upper center", ncols=2, fontsize=10)
    return fig


# ---- the forward process on an image ----------------------------------------------------------------


def load_image(image: str, size: int, root: str | None = None) -> Tensor:
    """One image as (C, size, size) in [-1, 1]: ``digits`` (scikit-learn, 8x8 upscaled), ``mnist``
    (from ``root``), ``china`` / ``flower`` (scikit-learn's sample photos) or a file path."""
    if image == "digits":
        from ddpm.data.images import digits

        x = digits()[0][0]
    elif image == "mnist":
        from ddpm.data.images import mnist

        if root is None:
            raise ConfigError("--image mnist needs --root DIR holding MNIST/raw")
        x = mnist(root)[0][0]
    else:
        if image in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            pil = Image.fromarray(load_sample_image(f"{image}.jpg"))
        elif Path(image).is_file():
            pil = Image.open(image).convert("RGB")
        else:
            raise ConfigError(f"--image {image!r} is not digits, mnist, china, flower or an image file")
        side = min(pil.size)
        left, top = (pil.width - side) // 2, (pil.height - side) // 2
        pil = pil.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 127.5 - 1
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp(-1, 1)


def forward_figure(x0: Tensor, names: list[str], fractions: list[float], seed: int = 0) -> Figure:
    """x_t = q_sample(x_0, t, eps) for each schedule (rows) at t = min(round(f T), T - 1) (columns), one eps for all."""
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


# ---- the forward process on a 1-D distribution ------------------------------------------------------


def bimodal(num: int, generator: torch.Generator) -> Tensor:
    """x_0 ~ 0.3 N(-0.5, 0.08^2) + 0.7 N(0.5, 0.08^2): mean 0.2, variance 0.22, far from N(0, 1)."""
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


# ---- 2-D toy figures (drawn by ddpm.toy.ToyPlots) -----------------------------------------------------

LIMITS = (-1.3, 1.3)


def _draw_data(ax, data: Tensor, limits: tuple[float, float] = LIMITS) -> None:
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
    lin = torch.linspace(-1.5, 1.5, n)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # (n*n, 2)
    fields = {t: score(grid, t) for t in times}
    norms = torch.cat([f.norm(dim=1) for f in fields.values()])
    color_norm = LogNorm(vmin=norms.min().clamp(min=1e-3).item(), vmax=norms.max().item())
    cmap = colormaps["viridis"].resampled(10)  # a few distinct colours read better than a gradient
    fig = Figure(figsize=(3.6 * len(times) + 1.2, 4.3), layout="constrained")
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    for ax, (t, s) in zip(axes, fields.items()):
        ax.scatter(data[:, 0], data[:, 1], s=2, color="0.8", rasterized=True)
        length = s.norm(dim=1, keepdim=True).clamp(min=1e-12)
        u = s / length  # unit arrows: the size spans orders of magnitude across t, so it is the colour
        quiver = ax.quiver(
            grid[:, 0], grid[:, 1], u[:, 0], u[:, 1], length[:, 0], cmap=cmap, norm=color_norm,
            angles="xy", scale_units="xy", scale=1 / 0.11, width=0.006,
        )
        ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal", xlabel="$x_1$")
        ax.set_title(rf"t = {t}   ($\sqrt{{\bar\alpha_t}}$ = {schedule.sqrt_alphas_cumprod[t].item():.2f})")
    axes[0].set_ylabel("$x_2$")
    fig.colorbar(quiver, ax=axes, label=r"$|\hat\epsilon|\,/\,\sqrt{1-\bar\alpha_t}$", shrink=0.85, pad=0.01)
    fig.suptitle(
        r"Learned score $\nabla_x \log p_t(x) = -\hat\epsilon(x, t) / \sqrt{1-\bar\alpha_t}$"
        " (grey: the data): arrows show its direction, colour its size"
    )
    return fig


def trajectories_figure(states: list[Tensor], times: list[int], data: Tensor, num_paths: int) -> Figure:
    """The sampled points at each of ``times`` and at the end; the first ``num_paths`` points are
    drawn large, with their path since the previous panel.

    ``states`` are T + 1 tensors (N, 2): states[k] is x_t for t = T - 1 - k, the input of the
    sampler's step at t, and states[T] is its output.
    """
    T = len(states) - 1
    panels = [(f"t = {t}", T - 1 - t) for t in times] + [("output $x_0$", T)]
    paths = torch.stack([x[:num_paths] for x in states], dim=1)  # (K, T + 1, 2)
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
    fig.suptitle(f"Reverse process: {len(states[0])} points from $x_T \\sim N(0, I)$ through {T} sampler steps")
    return fig


# ---- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    names = {"nargs": "+", "default": DEFAULT_SCHEDULES, "choices": sorted(SCHEDULES), "metavar": "NAME"}
    p = sub.add_parser("schedules", help="beta, alpha-bar, signal/noise scales and log SNR of several schedules")
    p.add_argument("--schedules", **names, help=f"from {sorted(SCHEDULES)} (default: %(default)s)")
    p = sub.add_parser("forward", help="x_t of one image at a row of timesteps, one row per schedule")
    p.add_argument("--schedules", **names, help=f"from {sorted(SCHEDULES)} (default: %(default)s)")
    p.add_argument("--image", help="digits | mnist | china | flower | PATH (default: mnist with --root, else digits)")
    p.add_argument("--root", default=None, help="data root holding MNIST/raw, for --image mnist")
    p.add_argument("--size", type=int, default=64, help="side of the square image in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("forward1d", help="histograms of a 1-D bimodal distribution drifting to N(0, 1)")
    p.add_argument("--beta", type=float, default=0.01, help="the fixed beta compared with the linear schedule")
    p.add_argument("--seed", type=int, default=0)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=Path("outputs/plots"), help="folder for the PNGs")
        p.add_argument("--dpi", type=int, default=100, help="pixels per inch of the PNGs (default 100)")
    return parser


FORWARD_FRACTIONS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


@report_config_errors
def main(argv: list[str] | None = None) -> list[Path]:
    args = _parser().parse_args(argv)
    if args.command == "schedules":
        figures = {"schedules": schedules_figure(args.schedules)}
    elif args.command == "forward":
        image = args.image or ("mnist" if args.root else "digits")
        name = Path(image).stem if Path(image).is_file() else image
        x0 = load_image(image, args.size, args.root)
        figures = {f"forward_{name}": forward_figure(x0, args.schedules, FORWARD_FRACTIONS, args.seed)}
    else:
        if not 0 < args.beta < 1:
            raise ConfigError(f"--beta {args.beta} is not allowed: it must lie in (0, 1)")
        figures = {"forward1d": forward1d_figure(args.beta, seed=args.seed)}
    paths = []
    for name, fig in figures.items():
        fig.set_dpi(args.dpi)
        paths.append(args.out / f"{name}.png")
        save_figure(fig, paths[-1])
        print(f"wrote {paths[-1]}")
    return paths


if __name__ == "__main__":
    main()
