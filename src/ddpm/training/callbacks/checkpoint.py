"""``StepCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the final step.

Lightning 2.6 writes ``last.ckpt`` at the end of training only if it has never written one in this
fit (``on_train_end`` tests ``_last_checkpoint_saved``, which stays True after the first periodic
save). So a run whose ``trainer.max_steps`` is not a multiple of ``every_n_train_steps`` ended with
``last.ckpt`` at the last multiple: the final steps were lost, and evaluating ``last.ckpt`` silently
scored an older model. Here the end of training saves ``last.ckpt`` whenever the final step has not
been saved yet (the same atomic save as every other checkpoint).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
