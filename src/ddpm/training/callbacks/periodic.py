"""What the periodic callbacks share: a schedule of optimizer steps to act at, and sending images to the loggers."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.evaluation.sampling import chunk_seed


def log_image(trainer: L.Trainer, key: str, image: Tensor, step: int) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # WandbLogger, and any logger with the same API
            logger.log_image(key=key, images=[image.float().cpu()], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            logger.experiment.add_image(key, image.float().cpu(), global_step=step)


def check_sampled_evaluation(every_n_steps: int, num_samples: int, batch_size: int, seed: int) -> None:
    """The arguments of a callback that samples and scores every ``every_n_steps`` steps (FID, FD):
    a ConfigError of one line naming them, at construction rather than at the first evaluation."""
    if every_n_steps < 1 or num_samples < 2 or batch_size < 1:
        raise ConfigError(
            f"every_n_steps={every_n_steps!r}, num_samples={num_samples!r}, batch_size={batch_size!r}: "
            "need every_n_steps >= 1, num_samples >= 2, batch_size >= 1"
        )
    chunk_seed(seed, 0)  # a negative seed


class EveryNSteps(L.Callback):
    """Calls ``run(trainer, pl_module)`` on every rank after each optimizer step that is a multiple of
    ``every_n_steps`` (0: never), once per step (a step spans several batches under gradient accumulation)."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._run_once(trainer, pl_module)

    def _run_once(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module) -> None:
        raise NotImplementedError


class PeriodicDrawing(EveryNSteps):
    """Calls ``draw(trainer, pl_module)`` every ``every_n_steps`` optimizer steps (0: never) and once
    more at the end of training, unless the last step was just drawn. ``draw`` runs on rank zero."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 0:
            raise ConfigError(f"every_n_steps={every_n_steps!r} is not allowed: use 0 (only at the end) or more")
        super().__init__(every_n_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._run_once(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module) -> None:
        rank_zero_only(self.draw)(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        raise NotImplementedError
