"""``StepCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step.

Lightning 2.6 writes ``last.ckpt`` at the end of training only if it has never written one in this
fit (``on_train_end`` tests ``_last_checkpoint_saved``, which stays True after the first periodic
save). So a run whose ``trainer.max_steps`` is not a multiple of ``every_n_train_steps`` ended with
``last.ckpt`` at the last multiple: the final steps were lost, and evaluating ``last.ckpt`` silently
scored an older model. Here the end of training saves ``last.ckpt`` whenever the final step has not
been saved yet (the same atomic save as every other checkpoint).

When ``max_steps`` stops a fit mid-epoch, Lightning still runs the epoch's end (its counters say
epoch 0 processed and completed) before ``on_train_end`` saves ``last.ckpt``; a fit resumed from
that file with a larger ``max_steps`` started the next epoch and skipped the rest of this one (and
when it stopped at an epoch's last batch, skipped the next epoch). ``where_the_fit_stopped`` makes
that checkpoint's loop state say where the fit stopped, so extending a run is exact.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        where_the_fit_stopped(checkpoint, trainer.num_training_batches)


def where_the_fit_stopped(checkpoint: dict[str, Any], batches_per_epoch: float) -> None:
    """Rewrite, in place, the loop state of a checkpoint saved after the epoch's end ran (``on_train_end``:
    ``max_steps`` stopped the fit) so that a resume continues where the fit stopped:

    - mid-epoch (not all of the epoch's batches ran): the epoch was started, not processed or
      completed, and ``epoch`` is the one still running, as in a periodic mid-epoch checkpoint;
    - at the epoch's last batch: the next epoch starts at its batch 0 (Lightning keeps the finished
      epoch's batch count, so the resumed next epoch ran out at once and the one after it began).

    A checkpoint saved before the epoch's end ran (a periodic one, a stop on a signal mid-epoch) is left as it is.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return
    epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    if not all(c["started"] == c["processed"] == c["completed"] for c in epochs.values()):
        return  # saved before the epoch's end ran ("total" and "current" alike)
    if batches["is_last_batch"] or batches["current"]["ready"] >= batches_per_epoch:
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False
        return
    for counts in epochs.values():
        counts["processed"] = counts["completed"] = counts["started"] - 1
    checkpoint["epoch"] = epochs["current"]["completed"]
