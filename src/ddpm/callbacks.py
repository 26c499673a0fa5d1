"""Training callbacks: sample grids from the EMA (and optionally raw) weights, throughput."""

from __future__ import annotations

import math
import time
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


class Throughput(L.Callback):
    """Logs training speed: ``perf/images_per_sec`` (all ranks together) and, given the device's
    peak, ``perf/mfu`` (model FLOPs utilisation, 3x the forward FLOPs per image, see
    :func:`ddpm.perf.forward_flops`).

    Time is measured over windows of ``every_n_steps`` optimizer steps and waits for the device
    only at a window's end, so the training loop keeps no per-step host sync. The first window
    starts after ``skip_steps`` steps (compilation, cuDNN autotuning and allocator warm-up are
    not training speed). A window includes whatever else ran in it (grids, checkpoints, logging):
    this is the speed of the whole loop, not of the bare step.

    Args:
        every_n_steps: window length in optimizer steps.
        skip_steps: steps before the first window.
        peak_tflops: the device's peak for the training precision, in TFLOP/s (e.g. the bf16
            matmul peak that ``benchmarks/throughput.py`` measures); null: no MFU.
    """

    def __init__(self, every_n_steps: int = 100, skip_steps: int = 50, peak_tflops: float | None = None):
        if every_n_steps < 1 or skip_steps < 0:
            raise ConfigError(f"every_n_steps={every_n_steps!r}, skip_steps={skip_steps!r}: "
                              "every_n_steps must be 1 or more, skip_steps 0 or more")
        self.every_n_steps, self.skip_steps, self.peak_tflops = every_n_steps, skip_steps, peak_tflops
        self._start: tuple[float, int, int] | None = None  # (time, step, images) at the window start
        self._images = 0
        self.flops_per_image: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        from ddpm.perf import forward_flops

        self._start, self._images = None, 0
        if self.peak_tflops:
            self.flops_per_image = 3 * forward_flops(pl_module.net, pl_module.sample_shape)

    def _sync(self, trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += x.shape[0] * trainer.world_size  # shapes are known on the host: no sync
        step = trainer.global_step
        if step < self.skip_steps or (step - self.skip_steps) % self.every_n_steps:
            return
        now = self._sync(trainer)
        if self._start is not None and step > self._start[1]:
            seconds = now - self._start[0]
            images = self._images - self._start[2]
            entry = {"perf/images_per_sec": images / seconds, "perf/steps_per_sec": (step - self._start[1]) / seconds}
            if self.flops_per_image:
                entry["perf/mfu"] = images * self.flops_per_image / seconds / (self.peak_tflops * 1e12)
            if trainer.is_global_zero:  # straight to the loggers: the window need not end on a logging step
                for logger in trainer.loggers:
                    logger.log_metrics(entry, step=step)
        self._start = (now, step, self._images)
