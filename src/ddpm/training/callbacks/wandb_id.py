"""The W&B run id in every checkpoint, so that the checkpoint alone says which W&B run it continues."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from ddpm.training.logs.wandb_run import CHECKPOINT_KEY


class WandbIdInCheckpoint(L.Callback):
    """Writes the id of the run's W&B run as ``checkpoint["wandb_id"]`` in every checkpoint (periodic,
    ``last.ckpt``, the save on a stop signal, Lightning's HPC checkpoint). A start resumed from that
    checkpoint in a directory without ``<run dir>/wandb_id`` continues that W&B run
    (``ddpm.training.logs.wandb_run.adopt_checkpoint_id``). Nothing is written without a W&B logger."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_KEY] = str(logger.version)
                return
