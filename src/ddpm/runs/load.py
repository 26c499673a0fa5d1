"""A trained run, loaded back from one of its checkpoints: its config and the module with the weights.

A run directory, as ``train.py`` leaves it, holds ``config.yaml`` (the composed train config) and
``checkpoints/*.ckpt``; configs of runs written before the package was layered are upgraded on
load (``ddpm.runs.legacy``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.errors import ConfigError, root_config_error
from ddpm.runs.allowlist import checked_config
from ddpm.runs.build import build_module
from ddpm.runs.legacy import upgrade_run_config
from ddpm.training.checkpoint_load import check_fits, read_checkpoint
from ddpm.training.module import DiffusionModule


def with_denoiser(run_cfg: DictConfig, denoiser: Mapping | None = None) -> DictConfig:
    """A copy of a run config whose ``denoiser`` fields are replaced by the non-null values of
    ``denoiser``, e.g. ``{"variance": "fixed_large", "clip_denoised": None}`` (None: as trained)."""
    run_cfg = run_cfg.copy()
    with open_dict(run_cfg):
        for key, value in (denoiser or {}).items():
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


def load_run(ckpt_path: str | os.PathLike, denoiser: Mapping | None = None) -> tuple[Path, DictConfig, DiffusionModule]:
    """(run directory, its config, the module with the checkpoint's weights, in eval mode) of
    ``<run>/checkpoints/X.ckpt``.

    Args:
        ckpt_path: a checkpoint in ``<run>/checkpoints/``; ``<run>/config.yaml`` is the run's config.
        denoiser: denoiser fields to change before the module is built (see ``with_denoiser``), e.g.
            another reverse variance for sampling and the bound; the returned config has them.

    Only tensors and plain containers are read from the checkpoint (``weights_only=True``), and the
    config may only instantiate what ``ddpm.runs.allowlist`` allows, checked before anything is
    built. A path that is not such a checkpoint, a forbidden target, or a bad denoiser value is a
    ConfigError naming it.
    """
    ckpt = Path(ckpt_path).expanduser()
    run_dir = ckpt.parent.parent
    if not ckpt.is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"ckpt_path='{ckpt}' is not a checkpoint in <run>/checkpoints/ with <run>/config.yaml")
    run_cfg = with_denoiser(read_run_config(run_dir / "config.yaml"), denoiser)
    checkpoint = read_checkpoint(ckpt)
    try:
        module = build_module(run_cfg)
    except Exception as e:  # Hydra wraps what a constructor raised; a bad value is the user's ConfigError
        raise root_config_error(e) or e
    check_fits(module, ckpt, checkpoint["state_dict"])  # a checkpoint of another model: one line naming a parameter, not torch's wall
    module.load_state_dict(checkpoint["state_dict"])
    return run_dir, run_cfg, module.eval()  # no dropout in what is measured (module.sample sets it too)
