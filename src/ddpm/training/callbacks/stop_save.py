"""Save a checkpoint when SIGTERM or SIGINT stops training, and exit with the signal's code."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopSave(L.Callback):
    """On SIGTERM (SLURM, Kubernetes) or SIGINT (Ctrl+C), finish the current step, write ``last.ckpt``
    at it and exit ``128 + signal`` (143, 130), so a scheduler never records a stopped run as done.

    SIGTERM is Lightning's: its handler sets ``trainer.received_sigterm`` and the loop raises
    ``SIGTERMException`` after the step (LR schedule stepped, counters advanced), which reaches
    ``on_exception``. SIGINT is routed the same way instead of a ``KeyboardInterrupt`` in the middle
    of an optimizer or EMA update; a second Ctrl+C interrupts at once, saving nothing.
    ``dirpath``: where ``last.ckpt`` goes when no ModelCheckpoint is configured.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.signum: int | None = None
        self._previous_sigint = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        # Lightning's SIGTERM handler: sets received_sigterm (broadcast to every rank under DDP).
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signum, frame)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()

    def last_path(self, trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            return Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException):
            return  # a crash or a second Ctrl+C: the state may be mid-step, keep the last good save
        signum = self.signum or signal.SIGTERM
        path = self.last_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; rank 0 writes
        self._say(f"{signal.Signals(signum).name} at step {trainer.global_step}: saved {path} "
                  f"(resume with ckpt_path={path})")
        # The loop re-raises this SystemExit after the hooks; its code becomes the exit status.
        exception.code = 128 + signum

    @staticmethod
    @rank_zero_only
    def _say(message: str) -> None:
        print(message, flush=True)
