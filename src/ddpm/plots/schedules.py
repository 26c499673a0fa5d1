"""The named noise schedules, read from ``conf/schedule/*.yaml``, and the figure of their curves.

Every curve is a buffer of a ``NoiseSchedule``; nothing here re-derives a schedule formula. A
schedule's name is its config file's, so the figures draw exactly what ``schedule=<name>`` trains
with; the two deliberately bad schedules are overrides of one of those files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import ddpm
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

# Two bad schedules, each (config file, overrides): what goes wrong when abar_T is far from 0 or
# reaches it far too early.
BAD_SCHEDULES: dict[str, tuple[str, dict[str, float]]] = {
    # abar_T = 0.08: x_T keeps 29% of the image, so sampling from N(0, I) starts off the training distribution.
    "too_little_noise": ("linear", {"beta_start": 1e-3, "beta_end": 4e-3}),
    # abar_t < 1e-3 from t = 293 on: 70% of the steps see pure noise, and step 0 already removes 1% of the signal.
    "too_much_noise": ("linear", {"beta_start": 1e-2, "beta_end": 0.1}),
}
DEFAULT_SCHEDULES = ["linear", "cosine", "scaled_linear", "too_little_noise", "too_much_noise"]


def schedule_folder(conf: Path | None = None) -> Path:
    """``<conf>/schedule``; by default the repository's ``conf/``, which the editable install of
    ``src/ddpm`` has three levels above the package."""
    conf = Path(ddpm.__file__).resolve().parents[2] / "conf" if conf is None else Path(conf)
    folder = conf / "schedule"
    if not folder.is_dir():
        raise ConfigError(f"no schedule configs at {folder}: the named schedules are read from the repository's conf/")
    return folder


def schedule_configs(conf: Path | None = None) -> dict[str, DictConfig]:
    """Every named schedule as one constructor call: ``<conf>/schedule/<name>.yaml``, and each bad
    schedule as its base file with the overrides of ``BAD_SCHEDULES``."""
    configs = {path.stem: OmegaConf.load(path) for path in sorted(schedule_folder(conf).glob("*.yaml"))}
    for name, (base, overrides) in BAD_SCHEDULES.items():
        configs[name] = OmegaConf.merge(configs[base], overrides)
    return configs


def schedule_names(conf: Path | None = None) -> list[str]:
    """The names ``get_schedule`` knows, sorted."""
    return sorted(schedule_configs(conf))


def get_schedule(name: str, conf: Path | None = None) -> NoiseSchedule:
    """The schedule called ``name``, instantiated from its config."""
    configs = schedule_configs(conf)
    if name not in configs:
        raise ConfigError(f"schedule {name!r} is not known: choose from {sorted(configs)}")
    return instantiate(configs[name])


def describe(name: str, schedule: NoiseSchedule) -> str:
    """A legend entry: the name, the beta range, T and the abar_T that decides whether x_T ~ N(0, I)."""
    b = schedule.betas
    abar_T = schedule.alphas_cumprod[-1].item()
    return rf"{name}: $\beta$ {b[0]:.0e}…{b[-1]:.2g}, T={schedule.num_timesteps}, $\bar\alpha_T$={abar_T:.1g}"


def schedule_curves(schedule: NoiseSchedule) -> dict[str, Tensor]:
    """The curves the schedules figure draws, each (T,) read from the schedule's buffers, as float64."""
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
