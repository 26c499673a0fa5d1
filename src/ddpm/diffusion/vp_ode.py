"""EDM's Euler and Heun samplers for the models trained on the discrete VP chain: ``sampler=heun|euler``.

A net trained on today's DDPM chain is a denoiser of the VP path at its integer timesteps; the continuous
path (``processes.VPProcess``: log-SNR linear in t between integers) and a float timestep to the net
extend it to any t, so the probability-flow ODE can be solved by EDM's samplers (Karras et al. 2022,
Algorithms 1 and 2, ``ode_samplers``) on a Karras rho-spaced grid of noise levels. This module is the
bridge: it takes the discrete samplers' call, ``sampler(denoiser, schedule, x_T, generator, cond)``, with
the module's ``Denoiser`` (or its ``ClassifierFreeGuidance``), and runs the continuous sampler on

    denoise(x_t, t, cond) -> x0_hat:
        1. raw = net(x_t, t, cond) at the float timestep t; a learned-variance net's variance half is dropped
        2. (x0_hat, eps_hat) from raw by the Denoiser's prediction type on the continuous path
           (``continuous_denoiser.ContinuousDenoiser``, eps / x0 / v)
        3. guided: both halves from one call on [x_t; x_t] with [cond; null], eps = guided_eps(eps_c, eps_u)
           (``guidance.guided_eps``: the same formula and rescale as the discrete samplers), x0 from eps;
           the guidance interval is read in the same timesteps
        4. x0_hat clipped to [-1, 1] when the Denoiser clips

``steps`` counts solver steps: Heun makes 2 steps - 1 network evaluations (EDM's 18 steps: 35), Euler
``steps``; ``timesteps`` lists the time of every evaluation, so ``evaluate.py`` reports NFE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.conditions import cat_conditions
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance, guided_eps
from ddpm.diffusion.ode_samplers import DenoiseFn, EulerSampler, HeunSampler
from ddpm.diffusion.processes import VPProcess
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

PREDICTIONS = {"epsilon": "eps", "x0": "x0", "v": "v"}  # the Denoiser's prediction_type -> ContinuousDenoiser's
SOLVERS = {"heun": HeunSampler, "euler": EulerSampler}


class VPODESampler:
    """Euler or Heun on the VP model's probability-flow ODE (module docstring).

    Args:
        solver: ``heun`` (EDM's Algorithm 1/2, 2nd order) or ``euler``.
        steps: solver steps (Heun: 2 steps - 1 network evaluations).
        spacing, rho: the grid of ``ode_samplers.time_grid``: ``karras`` (EDM's rho spacing of noise levels,
            rho 7), ``uniform`` in t, or ``log_snr``.
        S_churn, S_tmin, S_tmax, S_noise: EDM's stochastic churn (Algorithm 2); 0 churn: the deterministic ODE.
    """

    def __init__(self, solver: str = "heun", steps: int = 18, spacing: str = "karras", rho: float = 7.0,
                 S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                 progress: bool = False):
        if solver not in SOLVERS:
            raise ConfigError(f"sampler.solver={solver!r} is not allowed: choose one of {list(SOLVERS)}")
        self.name = self.solver = solver
        self.ode = SOLVERS[solver](steps=steps, spacing=spacing, rho=rho, S_churn=S_churn, S_tmin=S_tmin,
                                   S_tmax=S_tmax, S_noise=S_noise)
        self.steps, self.spacing, self.rho, self.progress = steps, spacing, rho, progress
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = S_churn, S_tmin, S_tmax, S_noise

    def nfe(self) -> int:
        return self.ode.nfe()

    def timesteps(self, schedule: NoiseSchedule) -> list[float]:
        """The time of every network evaluation, in the schedule's timesteps (NFE entries)."""
        t = self.ode.grid(VPProcess(schedule)).t.tolist()[:-1]  # the last time is the clean end
        if self.name == "euler":
            return t
        return [t[0], *(u for u in t[1:] for _ in range(2))]  # Heun: the corrector at t_i+1, then the next step there

    def __call__(self, denoiser: Denoiser | ClassifierFreeGuidance, schedule: NoiseSchedule, x_T: Tensor,
                 generator: torch.Generator | None = None, cond: Any = None) -> Tensor:
        process = VPProcess(schedule)
        self.ode.progress = self.progress
        return self.ode(vp_denoise_fn(denoiser, process), process, x_T, generator, cond)


def vp_denoise_fn(denoiser: Denoiser | ClassifierFreeGuidance, process: VPProcess) -> DenoiseFn:
    """``denoise(x_t, t, cond) -> x0_hat`` at float timesteps t (B,) of the module's (guided) Denoiser (module doc)."""
    guidance = denoiser if isinstance(denoiser, ClassifierFreeGuidance) else None
    base: Denoiser = guidance.denoiser if guidance is not None else denoiser
    path = ContinuousDenoiser(base.net, process, PREDICTIONS[base.prediction_type])

    def predict(x: Tensor, t: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        prediction, _ = base.split_output(base.net_output(x, t, cond), x)  # 1. (B, C, ...), the variance half dropped
        return path.from_output(prediction.to(x.dtype), x, t)  # 2. (x0_hat, eps_hat), in x_t's dtype

    def denoise(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if guidance is None:
            x0, _ = predict(x_t, t, cond)
        elif cond is None:  # the unconditional model: the null class, the empty prompt
            x0, _ = predict(x_t, t, guidance.null_like(len(x_t), x_t.device))
        else:  # 3. both halves in one call
            scale = guidance.scale_at(t)
            null = guidance.null_like(len(x_t), x_t.device)
            _, eps2 = predict(torch.cat([x_t, x_t]), torch.cat([t, t]), cat_conditions(cond, null))
            eps = guided_eps(eps2[: len(x_t)], eps2[len(x_t):], scale, guidance.rescale)
            x0 = process.x0_of(x_t, eps, t)
        return x0.clamp(-1.0, 1.0) if base.clip_denoised else x0  # 4.

    return denoise
