"""The learning-rate schedule every module steps by: a linear warm-up, then constant or a half cosine to 0."""

from __future__ import annotations

import math
from collections.abc import Callable


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
