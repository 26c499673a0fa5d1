"""Moved to ``ddpm.training.checkpoints`` (issue 23): this re-export stays only until
``ddpm.training.module`` imports ``check_steps_left`` from there."""

from ddpm.training.checkpoints.reading import check_steps_left

__all__ = ["check_steps_left"]
