"""A run's config as the runs layer reads it: the saved ``config.yaml`` of a run directory, checked
before anything is built, and the one place that says which kind of module a config trains.

A run directory, as ``train.py`` leaves it, holds ``config.yaml`` (the composed train config) and
``checkpoints/*.ckpt``; configs of runs written before the package was layered are upgraded on
load (``ddpm.runs.legacy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess
from ddpm.errors import ConfigError
from ddpm.nets.autoencoder import KLAutoencoder
from ddpm.runs import resolvers  # noqa: F401  (registers ${ddpm.eq:A,B} for the configs read here)
from ddpm.runs.allowlist import checked_config
from ddpm.runs.legacy import upgrade_run_config
from ddpm.training.autoencoder_module import AutoencoderModule
from ddpm.training.module import DiffusionModule


def _target(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# module._target_ -> the kind of run: what is built (ddpm.runs.build), loaded and evaluated
KINDS = {_target(DiffusionModule): "diffusion", _target(AutoencoderModule): "autoencoder",
         "ddpm.training.latent_module.LatentDiffusionModule": "latent"}  # a run saved before the codec (not upgraded)
AUTOENCODER_NET = _target(KLAutoencoder)
# process._target_ -> the process= choice (runs from before the group have none: vp)
VP_TARGET = _target(VPProcess)
PROCESSES = {VP_TARGET: "vp", _target(EDMProcess): "edm", _target(FlowProcess): "flow"}


def process_choice(cfg: DictConfig) -> str:
    """``vp``, ``edm`` or ``flow``: the ``process=`` a train or run config chose (vp for runs from before the group)."""
    target = OmegaConf.select(cfg, "process._target_", default=VP_TARGET)
    return PROCESSES.get(target, str(target))


def module_kind(cfg: DictConfig) -> str:
    """``diffusion``, ``latent`` (diffusion on a frozen autoencoder's latents: ``codec=autoencoder``) or
    ``autoencoder``: the kind of module a train or run config trains, from its ``module`` and ``codec`` nodes,
    checked against its network. A
    net of the other kind (a run config saved with an autoencoder net and a diffusion module) is a
    ConfigError of one line."""
    target = OmegaConf.select(cfg, "module._target_", default=None)
    if target not in KINDS:
        raise ConfigError(f"module._target_={target!r} is not a module this project trains: use module=diffusion "
                          "(codec=autoencoder for latents), or an autoencoder run (python train.py experiment=autoencoder_mnist)")
    kind = KINDS[target]
    codec = OmegaConf.select(cfg, "codec", default=None)
    if kind == "diffusion" and codec and "autoencoder_ckpt" in codec.keys():  # (`in` alone: False for a missing ???)
        kind = "latent"
    net = OmegaConf.select(cfg, "model._target_", default=None)
    if kind == "autoencoder" and net != AUTOENCODER_NET:
        raise ConfigError(f"model._target_={net} is not an autoencoder, but this run trains one ({target}): give an "
                          "autoencoder net (experiment=autoencoder_mnist, autoencoder=kl_f4)")
    if kind != "autoencoder" and net == AUTOENCODER_NET:
        raise ConfigError(f"model._target_={net} is an autoencoder, but module {target} trains a denoiser: train an "
                          "autoencoder with experiment=autoencoder_mnist (task=autoencoder), or give a denoiser "
                          "model (unet_small, dit_small, mlp, ...)")
    return kind


def with_denoiser(run_cfg: DictConfig, denoiser: Mapping | None = None) -> DictConfig:
    """A copy of a run config whose ``denoiser`` fields are replaced by the non-null values of
    ``denoiser``, e.g. ``{"variance": "fixed_large", "clip_denoised": None}`` (None: as trained)."""
    run_cfg = run_cfg.copy()
    changes = {k: v for k, v in (denoiser or {}).items() if v is not None}
    continuous = OmegaConf.select(run_cfg, "denoiser._target_", default="").endswith("ContinuousDenoiser")
    vp_only = {k: v for k, v in changes.items() if k != "clip_denoised"}  # a continuous denoiser clips too
    if vp_only and continuous:
        key, value = next(iter(vp_only.items()))
        raise ConfigError(f"denoiser.{key}={value} is an option of the VP chain's denoiser (process=vp); this run is "
                          f"process={process_choice(run_cfg)}, with a continuous-time denoiser: leave denoiser.{key} unset")
    with open_dict(run_cfg):
        for key, value in changes.items():
            if value is not None:
                run_cfg.denoiser[key] = value
    return run_cfg


def read_run_config(path: Path) -> DictConfig:
    """A run's ``config.yaml``, upgraded to today's layout, every ``_target_`` in it checked against the
    allow-list (``ddpm.runs.allowlist``) and its interpolations resolved, before anything is built."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # not YAML, or not a mapping
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"'{path}' cannot be read as a run config ({type(e).__name__}: {reason})") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"'{path}' is not a run config: it holds a {type(cfg).__name__}, not a mapping")
    try:
        cfg = upgrade_run_config(cfg)
    except Exception as e:  # a mapping, but not shaped like a train config (e.g. ``data: 5``)
        raise ConfigError(f"'{path}' is not a run config: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
    return checked_config(cfg, str(path))
