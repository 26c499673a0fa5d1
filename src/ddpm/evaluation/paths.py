"""The paths a probability-flow ODE solver takes, and how straight they are.

Flow matching's point (Liu et al. 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with
Rectified Flow", Sec. 2; Lipman et al. 2023, "Flow Matching for Generative Modeling", Sec. 4.1) is that its
ODE paths x_T -> x_0 are (nearly) straight lines, which an Euler solver follows in few steps; the VP chain's
probability-flow ODE (Song et al. 2021, Eq. 13) bends them. Both are measured from the recorded states:

    1. ``record_calls``: the denoiser wrapped so that every network call appends (t, x_t) to a list
    2. ``solver_states``: the states the solver steps through: of consecutive calls at the same time keep the
       last (Heun's corrector at t_{i+1} is followed by step i+1's call at t_{i+1} on the accepted x_{i+1}), then
       the solver's output
    3. ``straightness(paths)`` = |x_end - x_start| / sum_k |x_{k+1} - x_k|, per path: 1 for a straight segment
       walked one way, < 1 for any bend or back-and-forth (Liu et al.'s straightness, Eq. 5, read off the path
       rather than the velocity's variance)

Shapes: states (N, D) each; paths (S, N, D), S states of N paths in D dimensions.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ddpm.diffusion.ode_samplers import ContinuousSampler
from ddpm.diffusion.processes import GaussianProcess
from ddpm.errors import ConfigError


def record_calls(denoise: Callable[..., Tensor], calls: list[tuple[float, Tensor]]) -> Callable[..., Tensor]:
    """1. ``denoise`` wrapped: each call appends (t, x_t) to ``calls`` (t of the first sample, x_t on the CPU)."""

    def recorded(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        calls.append((float(t.reshape(-1)[0]), x_t.detach().cpu()))
        return denoise(x_t, t, cond)

    return recorded


def solver_states(calls: list[tuple[float, Tensor]], output: Tensor) -> tuple[list[float], Tensor]:
    """2. (times (S - 1,), paths (S, N, D)): the state of every solver step (of a run of calls at one time, the
    last) and the output last; the output has no time of its own (the clean end)."""
    kept = [(t, x) for k, (t, x) in enumerate(calls) if k + 1 == len(calls) or calls[k + 1][0] != t]
    return [t for t, _ in kept], torch.stack([x for _, x in kept] + [output.detach().cpu()])


@torch.no_grad()
def ode_paths(solver: ContinuousSampler, denoise: Callable[..., Tensor], process: GaussianProcess, x_T: Tensor,
              cond: Any = None) -> tuple[list[float], Tensor]:
    """(times, paths (S, N, D)) of one deterministic run of ``solver`` on ``process`` from x_T (N, D)."""
    if solver.S_churn > 0:
        raise ConfigError(f"sampler.S_churn={solver.S_churn}: the paths are the deterministic ODE's; use S_churn=0")
    calls: list[tuple[float, Tensor]] = []
    output = solver(record_calls(denoise, calls), process, x_T, None, cond)
    return solver_states(calls, output)


def straightness(paths: Tensor) -> Tensor:
    """3. (N,) |x_end - x_start| / path length of each of the N paths (S, N, D), in [0, 1] (float64)."""
    if paths.ndim != 3 or len(paths) < 2:
        raise ConfigError(f"paths of shape {tuple(paths.shape)}: need (S >= 2 states, N paths, D)")
    p = paths.double()
    length = (p[1:] - p[:-1]).norm(dim=2).sum(dim=0)  # (N,)
    chord = (p[-1] - p[0]).norm(dim=1)  # (N,)
    return chord / length.clamp(min=torch.finfo(torch.float64).tiny)


__all__ = ["ode_paths", "record_calls", "solver_states", "straightness"]
