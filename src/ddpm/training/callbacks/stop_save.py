"""Save a checkpoint when a signal stops training, on every rank at the same step, and exit with the
signal's code; on SLURM's requeue signal, let Lightning save its HPC checkpoint and requeue the job."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm.training.lightning_private import cluster_environment, hpc_save_path, slurm_save_and_requeue, stop_after_this_step

# What a rank received, as a number all ranks can agree on with one MAX all-reduce: requeue wins over
# a stop (the job must come back), a stop (SIGTERM) over Ctrl+C (the same save, another exit code).
_NONE, _INT, _TERM, _REQUEUE = 0, 1, 2, 3


def slurm_requeue_signal(trainer: L.Trainer) -> int | None:
    """The signal on which Lightning's SLURMEnvironment saves and requeues (USR1 unless configured
    otherwise), or None when not on SLURM or ``auto_requeue=False``."""
    environment = cluster_environment(trainer)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
        return int(environment.requeue_signal)
    return None


def restarts() -> int:
    """How many times SLURM has requeued this job (0 outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def requeues_spent(max_requeues: int | None) -> bool:
    """Whether a job requeued ``restarts()`` times may not be requeued again (``max_requeues``; None: no limit)."""
    return max_requeues is not None and restarts() >= max_requeues


class StopSave(L.Callback):
    """Stop at a step boundary on a signal, save, and exit ``128 + signal``, so nothing is lost and a
    scheduler never records a stopped run as done.

    - SIGTERM (SLURM preemption or ``scancel``, Kubernetes) and SIGINT (Ctrl+C): finish the step,
      write ``last.ckpt`` at it, exit 143 / 130. A second Ctrl+C interrupts at once, saving nothing.
    - SLURM's requeue signal (USR1 at ``--signal=USR1@<delay>`` before the time limit, or
      ``scancel --signal=USR1``): finish the step, then Lightning's own SLURM handler writes
      ``<run dir>/hpc_ckpt_N.ckpt`` and runs ``scontrol requeue``; the requeued job resumes from it
      (``ckpt_path=auto``, the default in a SLURM job). Lightning stays the only owner of requeue.

    The handlers only note the signal. Lightning's would act inside the handler, i.e. anywhere in a
    step: its SLURM handler saves between an optimizer update and the EMA update or step counter,
    and its SIGTERM handler broadcasts to the other ranks, a collective that under DDP can pair with
    another rank's gradient all-reduce. Here every rank shares what it received at the end of each
    step (one MAX all-reduce of a number), and all stop together after the step, where Lightning
    checks ``received_sigterm`` (LR schedule stepped, counters advanced), raising ``SIGTERMException``
    into ``on_exception``. ``dirpath``: where ``last.ckpt`` goes when no ModelCheckpoint is configured.
    ``max_requeues``: once the job has been requeued this many times (``SLURM_RESTART_COUNT``), the
    requeue signal saves ``last.ckpt`` and ends the job instead (None: no limit).
    """

    def __init__(self, dirpath: str | None = None, max_requeues: int | None = None):
        self.dirpath = dirpath
        self.max_requeues = max_requeues
        self.signum: int | None = None  # the signal acted on, once every rank knows of it
        self._received = _NONE  # what this rank's handlers noted
        self._codes: dict[int, int] = {}
        self._previous: dict[int, object] = {}

    # --- the handlers: note, nothing more ---------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum, self._received = None, _NONE
        self._codes = {int(signal.SIGINT): _INT, int(signal.SIGTERM): _TERM}
        requeue = slurm_requeue_signal(trainer)
        if requeue is not None:
            self._codes[requeue] = _REQUEUE
        if threading.current_thread() is threading.main_thread():  # Lightning's are restored at teardown
            self._previous = {s: signal.signal(s, self._on_signal) for s in self._codes}

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._received == _INT:
            raise KeyboardInterrupt  # the second Ctrl+C
        self._received = max(self._received, self._codes[signum])

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        self._previous = {}

    # --- the step boundary: agree, then let Lightning raise after the step ------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = self._received
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([received], dtype=torch.int32, device=pl_module.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank, every step, the same point
            received = int(flag.item())
        if received == _NONE:
            return
        by_code = {code: s for s, code in self._codes.items()}
        self.signum = by_code[received]
        # Lightning raises SIGTERMException after this step (training_epoch_loop: `received_sigterm`).
        stop_after_this_step(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def last_path(self, trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            return Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            self._restore()
            return  # a crash or a second Ctrl+C: the state may be mid-step, keep the last good save
        # The note-only handlers stay until Lightning's teardown restores the ones before it: the SIGTERM
        # that SLURM sends when it requeues must not reach Lightning's, which broadcasts to the ranks.
        signum = self.signum or int(signal.SIGTERM)  # None: Lightning's handler, before training started
        name = signal.Signals(signum).name
        if self._codes.get(signum) == _REQUEUE and not requeues_spent(self.max_requeues):
            # Lightning's SLURM handler, at the step boundary: hpc_ckpt_N.ckpt (every rank calls it, rank
            # 0 writes), then rank 0 runs `scontrol requeue` for the job (or its array task).
            path = hpc_save_path(trainer)
            slurm_save_and_requeue(trainer, signum)
            self._say(f"{name} at step {trainer.global_step}: saved {path}, job requeued; it resumes from there")
        else:  # a stop, or a requeue signal once max_requeues are spent
            if self._codes.get(signum) == _REQUEUE:
                self._say(f"{name}: not requeued, the job was requeued {restarts()} times already "
                          f"(callbacks.stop_save.max_requeues={self.max_requeues})")
            path = self.last_path(trainer)
            trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; rank 0 writes
            self._say(f"{name} at step {trainer.global_step}: saved {path} "
                      f"(continue with resume={trainer.default_root_dir})")
        # The loop re-raises this SystemExit after the hooks; its code becomes the exit status.
        exception.code = 128 + signum

    @staticmethod
    @rank_zero_only
    def _say(message: str) -> None:
        print(message, flush=True)
