"""The ``Throughput`` callback: images/s (and MFU) of the training loop, with one device sync per window."""

from __future__ import annotations

import time

import lightning as L
import torch

from ddpm.errors import ConfigError


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
        from ddpm.training.perf import forward_flops

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
