"""Checkpoints in one place: read a user's file as tensors only and check it fits the model
(``reading``), save atomically and tell whole files from cut-short ones (``atomic``), and find the one a
run continues from (``finding``). The runs layer and the modules import from here."""

from ddpm.training.checkpoints.atomic import AtomicCheckpointIO, atomic_torch_save, is_complete, remove_orphans
from ddpm.training.checkpoints.finding import (checkpoint_to_resume, find_resume, newest_complete, resolve_resume,
                                               run_checkpoints, run_of_checkpoint)
from ddpm.training.checkpoints.reading import check_fits, check_steps_left, current_name, read_checkpoint

__all__ = ["current_name", "AtomicCheckpointIO", "atomic_torch_save", "is_complete", "remove_orphans", "checkpoint_to_resume",
           "find_resume", "newest_complete", "resolve_resume", "run_checkpoints", "run_of_checkpoint", "check_fits",
           "check_steps_left", "read_checkpoint"]
