"""The learning-rate schedule every module steps by: a linear warm-up, then constant or a half cosine to 0.

    lr_schedule = functools.partial(warmup_cosine_lr, warmup_steps=100, decay_steps=None)  # conf/lr_schedule/
    scheduler = lr_schedule(optimizer)   # a LambdaLR, stepped once per optimizer step
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm.errors import ConfigError


def warmup_then_cosine(warmup_steps: int, decay_steps: int | None = None) -> Callable[[int], float]:
    """The factor on the configured learning rate at optimizer step ``step`` (a ``LambdaLR`` lambda).

    ``min(1, (step + 1) / warmup_steps)`` (1 without warm-up), times, when ``decay_steps`` is set,
    ``(1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2``: the cosine annealing of SGDR (Loshchilov &
    Hutter 2017) without restarts, reaching 0 at ``decay_steps`` (the run's ``trainer.max_steps``).
    """

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if not decay_steps or decay_steps <= 0:
            return ramp
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, decay_steps) / decay_steps))

    return factor


def warmup_cosine_lr(optimizer: torch.optim.Optimizer, warmup_steps: int = 0,
                     decay_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``LambdaLR`` of ``warmup_then_cosine``: ``conf/lr_schedule/constant.yaml`` (no decay) and ``cosine.yaml``
    (``decay_steps: ${trainer.max_steps}``) are partials of it. A bad option is one ConfigError line."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"lr_schedule.warmup_steps={warmup_steps!r} is not allowed: use 0 (no warm-up) or more")
    if decay_steps is not None and (isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1):
        raise ConfigError(f"lr_schedule.decay_steps={decay_steps!r} is not allowed: the cosine needs the run's length, "
                          "trainer.max_steps >= 1 (or lr_schedule=constant)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine(warmup_steps, decay_steps))
