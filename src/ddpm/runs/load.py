"""A trained run, loaded back from one of its checkpoints: its config and the module with the weights."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from ddpm.errors import unwrapped_config_errors
from ddpm.runs.build import build_module
from ddpm.runs.run_config import read_run_config, with_denoiser
from ddpm.training.checkpoints import check_fits, read_checkpoint, run_of_checkpoint
from ddpm.training.module import DiffusionModule

__all__ = ["load_run", "read_run_config", "with_denoiser"]


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
    ckpt, run_dir = run_of_checkpoint(ckpt_path)
    run_cfg = with_denoiser(read_run_config(run_dir / "config.yaml"), denoiser)
    checkpoint = read_checkpoint(ckpt)
    with unwrapped_config_errors():
        module = build_module(run_cfg)
    check_fits(module, ckpt, checkpoint["state_dict"], process=checkpoint.get("process"))  # a checkpoint of another model: one line naming a parameter, not torch's wall
    module.load_state_dict(checkpoint["state_dict"])
    return run_dir, run_cfg, module.eval()  # no dropout in what is measured (module.sample sets it too)
