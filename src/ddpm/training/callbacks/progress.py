"""The ``StepProgressBar`` callback: one tqdm bar over the whole run, in optimizer steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps done of the run's total (``trainer.max_steps``)
    with the ETA of the whole run, instead of restarting at every epoch (the 8x8 digits are 14
    batches an epoch). A resumed run starts the bar at its checkpoint's step; the rate and ETA
    count only the steps of this run.

    Args:
        refresh_rate: steps between redraws (0: no bar).
    """

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        total = trainer.max_steps if trainer.max_steps > 0 else convert_inf(trainer.estimated_stepping_batches)
        bar = self.train_progress_bar
        bar.reset(total=total)
        bar.initial = bar.n = trainer.global_step

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar for the whole run: a new epoch does not reset it

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar
            if step == bar.total:
                bar.close()  # the last step: its rate, before the final sample grid and checkpoint

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # the bar is closed at the end of training, not of an epoch
