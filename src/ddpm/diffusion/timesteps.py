"""Which timesteps a sampler visits: ``timestep_sequence`` and the (t, t_next) pairs between them.

Timesteps are 0-based (t = T - 1 is the noisiest trained step); t_next = -1 stands for the clean
image, where abar = 1.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

SPACINGS = ("linspace", "uniform", "trailing", "quadratic", "logsnr")


def check_steps(steps, upper: int | None = None) -> int:
    """``steps`` if it is an integer from 1 to ``upper`` (any positive integer when None), else a ConfigError."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (upper is not None and steps > upper):
        allowed = f"an integer from 1 to the schedule's T={upper}" if upper else "a positive integer such as 20 or 50"
        raise ConfigError(f"steps={steps!r} is not allowed: use {allowed}")
    return steps


def timestep_sequence(schedule: NoiseSchedule, steps: int, spacing: str = "linspace") -> list[int]:
    """The ``steps`` timesteps a fast sampler evaluates, strictly decreasing from T - 1.

    ``linspace`` (alias ``uniform``): round(linspace(T-1, 0, steps)), ends at 0.
        T=1000, 10 steps: [999, 888, 777, 666, 555, 444, 333, 222, 111, 0].
    ``quadratic``: round(linspace(0, sqrt(T-1), steps)^2) reversed, dense near 0 (the DDIM paper's
        quadratic sequence, stretched from its 0.8 T to T - 1); ends at 0.
    ``trailing``: round(T - i T/steps) - 1 for i = 0..steps-1 (Lin et al. 2024, Table 2; diffusers'
        ``trailing``): a uniform stride T/steps anchored at T - 1 whose next point is the clean
        image (t = -1), so the last model call is at round(T/steps) - 1. T=1000, 10 steps:
        [999, 899, ..., 99]. Rounding is half to even, of the exact value (T S - i T) / S; diffusers'
        ``np.arange(T, 0, -T/S)`` accumulates float error and can round such a tie the other way.
    ``logsnr``: uniform in log-SNR lambda_t between t = T-1 and t = 0 (Lu et al. 2022), ends at 0.
    Rounding collisions (many steps on a short schedule) are pushed apart, never dropped.
    """
    T = schedule.num_timesteps
    if spacing not in SPACINGS:
        raise ConfigError(f"spacing={spacing!r} is not allowed: choose one of {list(SPACINGS)}")
    check_steps(steps, T)
    if spacing in ("linspace", "uniform"):
        ts = np.round(np.linspace(T - 1, 0, steps))
    elif spacing == "quadratic":
        ts = np.round(np.linspace(math.sqrt(T - 1), 0, steps) ** 2)
    elif spacing == "trailing":
        ts = np.round((T * steps - np.arange(steps) * T) / steps) - 1  # exact quotients: ties stay ties
    else:  # logsnr: the t whose lambda is nearest to each point of a uniform lambda grid
        lam = 0.5 * schedule.snr.double().log().cpu().numpy()  # (T,), decreasing in t
        grid = np.linspace(lam[-1], lam[0], steps)
        ts = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)
    ts = ts.astype(np.int64)
    # Make strictly decreasing within [0, T-1]: push collisions up from the bottom, then down from the top.
    for i in range(steps - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    ts[0] = min(ts[0], T - 1)
    for i in range(1, steps):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return [int(t) for t in ts]


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_next) for every step, the last pair going to the clean image: t_next = -1."""
    return list(zip(timesteps, timesteps[1:] + [-1]))
