"""Training callbacks: sample grids from the EMA (and optionally raw) weights."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ddpm.errors import ConfigError


def image_grid(images: Tensor, min_side: int = 32) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1]; small images are upscaled (nearest)."""
    scale = max(1, math.ceil(min_side / images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    nrow = max(1, int(math.sqrt(images.shape[0])))
    return make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)


def log_image(trainer: L.Trainer, key: str, image: Tensor, step: int) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # WandbLogger, and any logger with the same API
            logger.log_image(key=key, images=[image.float().cpu()], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            logger.experiment.add_image(key, image.float().cpu(), global_step=step)


class PeriodicDrawing(L.Callback):
    """Calls ``draw(trainer, pl_module)`` every ``every_n_steps`` optimizer steps (0: never) and once
    more at the end of training, unless the last step was just drawn. ``draw`` runs on rank zero."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 0:
            raise ConfigError(f"every_n_steps={every_n_steps!r} is not allowed: use 0 (only at the end) or more")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._draw_once(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._draw_once(trainer, pl_module)

    def _draw_once(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        rank_zero_only(self.draw)(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        raise NotImplementedError


class SampleGrid(PeriodicDrawing):
    """Every ``every_n_steps`` optimizer steps and at the end of training, sample a grid with a
    fixed seed and save it as ``<run dir>/samples/step_XXXXXXX.png``; also sent to the logger.

    Args:
        every_n_steps: steps between grids (0: only at the end).
        num_samples: images per grid.
        seed: the seed of x_T and all sampling noise, the same for every grid.
        compare_raw: put the raw weights' samples beside the EMA's (left: EMA, right: raw),
            from the same noise, to see whether training works before the EMA catches up.
    """

    def __init__(self, every_n_steps: int = 1000, num_samples: int = 64, seed: int = 0, compare_raw: bool = False):
        super().__init__(every_n_steps)
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} is not allowed: use 1 or more")
        self.num_samples = num_samples
        self.seed = seed
        self.compare_raw = compare_raw
        self.last_path: Path | None = None

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        grids = []
        for use_ema in (True, False) if self.compare_raw else (True,):
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            images = pl_module.sample(self.num_samples, generator=generator, use_ema=use_ema)
            grids.append(image_grid(images))
        grid = torch.cat(grids, dim=-1) if len(grids) > 1 else grids[0]  # (C, H, W)
        out = Path(trainer.default_root_dir) / "samples" / f"step_{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out)
        self.last_path = out
        log_image(trainer, "samples/ema_vs_raw" if self.compare_raw else "samples/ema", grid, step)
