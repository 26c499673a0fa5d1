"""A trained run, loaded back from one of its checkpoints: its config and the module with the weights.

A run directory, as ``train.py`` leaves it, holds ``config.yaml`` (the composed train config) and
``checkpoints/*.ckpt``; configs of runs written before the package was layered are upgraded on
load (``ddpm.runs.legacy``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.errors import ConfigError, root_config_error
from ddpm.runs.build import build_module
from ddpm.runs.legacy import upgrade_run_config
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


def load_run(ckpt_path: str | os.PathLike, denoiser: Mapping | None = None) -> tuple[Path, DictConfig, DiffusionModule]:
    """(run directory, its config, the module with the checkpoint's weights, in eval mode) of
    ``<run>/checkpoints/X.ckpt``.

    Args:
        ckpt_path: a checkpoint in ``<run>/checkpoints/``; ``<run>/config.yaml`` is the run's config.
        denoiser: denoiser fields to change before the module is built (see ``with_denoiser``), e.g.
            another reverse variance for sampling and the bound; the returned config has them.

    Only tensors and plain containers are read from the checkpoint (``weights_only=True``). A path
    that is not such a checkpoint, or a bad denoiser value, is a ConfigError naming it.
    """
    ckpt = Path(ckpt_path).expanduser()
    run_dir = ckpt.parent.parent
    if not ckpt.is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"ckpt_path='{ckpt}' is not a checkpoint in <run>/checkpoints/ with <run>/config.yaml")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors and plain containers
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"ckpt_path='{ckpt}' cannot be read as a checkpoint ({type(e).__name__}: {reason})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path='{ckpt}' cannot be read as a checkpoint: it holds no state_dict")
    run_cfg = with_denoiser(upgrade_run_config(OmegaConf.load(run_dir / "config.yaml")), denoiser)
    try:
        module = build_module(run_cfg)
    except Exception as e:  # Hydra wraps what a constructor raised; a bad value is the user's ConfigError
        raise root_config_error(e) or e
    module.load_state_dict(checkpoint["state_dict"])
    return run_dir, run_cfg, module.eval()  # no dropout in what is measured (module.sample sets it too)
