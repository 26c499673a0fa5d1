"""The parts of Lightning's private API this package uses, all here: no public API does these things.

A Lightning upgrade may rename or move any of them. Each is reached through ``private``, which names
the attribute and the Lightning version in a ``LightningMoved`` error instead of an AttributeError
deep in a run (or, for an attribute that is set, instead of silently setting a new one that nothing
reads); tests/unit/training/test_lightning_private.py checks every one against the installed Lightning.

- ``_accelerator_connector.cluster_environment``: the cluster environment of a single-device run
  (a parallel strategy has the public ``trainer.strategy.cluster_environment``, used when there);
- ``_signal_connector.received_sigterm``: set, so that Lightning raises ``SIGTERMException`` after
  the step (``trainer.received_sigterm`` is the public, read-only view of it);
- ``_checkpoint_connector.hpc_save_path`` and ``_signal_connector._slurm_sigusr_handler_fn``: where
  Lightning's SLURM handler saves ``hpc_ckpt_N.ckpt``, and that handler (save, then requeue the job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

# attribute path on the Trainer -> what it is
PRIVATE = {
    "_accelerator_connector.cluster_environment": "the cluster environment (SLURM, torchelastic, ...)",
    "_signal_connector.received_sigterm": "the flag after which the fit loop raises SIGTERMException",
    "_checkpoint_connector.hpc_save_path": "the path of the next hpc_ckpt_N.ckpt",
    "_signal_connector._slurm_sigusr_handler_fn": "the SLURM requeue handler (save hpc_ckpt_N.ckpt, requeue)",
}


class LightningMoved(AttributeError):
    """A private Lightning attribute this package uses is not where it was."""


def private(trainer: L.Trainer, path: str) -> Any:
    """``trainer.<path>`` (a dotted path named in ``PRIVATE``: a KeyError otherwise), or a LightningMoved
    naming it."""
    what = PRIVATE[path]
    value = trainer
    for name in path.split("."):
        if not hasattr(value, name):
            raise LightningMoved(f"trainer.{path} ({what}) is gone in Lightning {L.__version__}: "
                                 f"update ddpm/training/lightning_private.py for this version")
        value = getattr(value, name)
    return value


def cluster_environment(trainer: L.Trainer):
    """The cluster environment the trainer runs in (a ``ClusterEnvironment``)."""
    public = getattr(trainer.strategy, "cluster_environment", None)  # parallel strategies only
    return public if public is not None else private(trainer, "_accelerator_connector.cluster_environment")


def stop_after_this_step(trainer: L.Trainer) -> None:
    """Make the fit loop raise ``SIGTERMException`` once the current step is done, as Lightning's own
    SIGTERM handler does (the callbacks' ``on_exception`` follows)."""
    private(trainer, "_signal_connector.received_sigterm")  # there: the assignment sets it, not a new attribute
    trainer._signal_connector.received_sigterm = True


def hpc_save_path(trainer: L.Trainer) -> Path:
    """Where Lightning's SLURM handler will write its checkpoint: ``<root dir>/hpc_ckpt_N.ckpt``."""
    return Path(private(trainer, "_checkpoint_connector.hpc_save_path")(trainer.default_root_dir))


def slurm_save_and_requeue(trainer: L.Trainer, signum: int) -> None:
    """Lightning's SLURM requeue handler, called at a step boundary: every rank calls it, rank 0 saves
    ``hpc_ckpt_N.ckpt`` and runs ``scontrol requeue`` for the job."""
    private(trainer, "_signal_connector._slurm_sigusr_handler_fn")(signum, None)
