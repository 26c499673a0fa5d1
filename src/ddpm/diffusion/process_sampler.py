"""The module's sampler on continuous time, for every process: ``sampler=heun|euler`` (and the other ODE/SDE solvers).

The module calls every sampler as ``sampler(denoiser, space, x_T, generator, cond)``; ``space`` is the VP model's
``NoiseSchedule`` or the ``GaussianProcess`` of an EDM or flow model. ``ODESampler`` takes that call and runs one
of the solvers of ``ode_samplers`` (Karras et al. 2022, Algorithms 1 and 2) on the process's probability-flow ODE:

    EDM / flow (a ``ContinuousDenoiser``, or ``ClassifierFreeGuidance`` around one): the denoiser itself is the
        ``denoise(x_t, t, cond) -> x0_hat`` of the solvers, on its own process.
    VP (the module's ``Denoiser``, or its guidance): a net trained on today's DDPM chain is a denoiser of the VP path
        at its integer timesteps; the continuous path (``processes.VPProcess``: log-SNR linear in t between integers)
        and a float timestep to the net extend it to any t, and ``vp_denoise_fn`` bridges:
        1. raw = net(x_t, t, cond) at the float timestep t; a learned-variance net's variance half is dropped
        2. (x0_hat, eps_hat) from raw by the Denoiser's prediction type on the continuous path
           (``continuous_denoiser.ContinuousDenoiser``, eps / x0 / v)
        3. guided: both halves from one call on [x_t; x_t] with [cond; null], eps = guided_eps(eps_c, eps_u)
           (``guidance.guided_eps``: the same formula and rescale as the discrete samplers), x0 from eps;
           the guidance interval is read in the same timesteps
        4. x0_hat clipped to [-1, 1] when the Denoiser clips

``steps`` counts solver steps: Heun makes 2 steps - 1 network evaluations (EDM's 18 steps: 35), Euler
``steps``; ``timesteps`` lists the time of every evaluation, so ``evaluate.py`` reports NFE.

The discrete samplers (``samplers``: DDPM, DDIM, DPM-Solver++ on the chain's timesteps) apply to VP only:
``check_sampler`` says so in one line before a process of another kind is sampled with them.
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
from ddpm.diffusion.multistep_samplers import DPMSolver2MSampler, DPMSolver3MSampler, EulerMaruyamaSampler
from ddpm.diffusion.ode_samplers import DenoiseFn, EulerSampler, HeunSampler
from ddpm.diffusion.processes import GaussianProcess, VPProcess, process_name
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

PREDICTIONS = {"epsilon": "eps", "x0": "x0", "v": "v"}  # the Denoiser's prediction_type -> ContinuousDenoiser's
SOLVERS = {"heun": HeunSampler, "euler": EulerSampler, "dpmpp_2m": DPMSolver2MSampler, "dpmpp_3m": DPMSolver3MSampler,
           "euler_maruyama": EulerMaruyamaSampler}


def sampler_name(sampler) -> str:
    return getattr(sampler, "name", type(sampler).__name__)


def check_sampler(sampler, process: GaussianProcess | None) -> None:
    """A ConfigError of one line when ``sampler`` cannot sample ``process``: the discrete samplers walk the VP
    chain's timesteps and apply to ``process=vp`` only."""
    if process_name(process) != "vp" and not isinstance(sampler, ODESampler):
        raise ConfigError(f"sampler={sampler_name(sampler)} applies to process=vp only (it walks the DDPM chain's "
                          f"timesteps); a process={process_name(process)} model samples with sampler="
                          f"{'|'.join(SOLVERS)}")


def sampler_for(sampler, process: GaussianProcess | None, default):
    """``sampler`` where it applies to ``process``; a discrete one (the callbacks' DDIM) off VP: ``default``, the
    run's own sampler. None: ``default``."""
    if sampler is None or (process_name(process) != "vp" and not isinstance(sampler, ODESampler)):
        return default
    return sampler


class ODESampler:
    """A continuous-time solver on any process (module docstring).

    Args:
        solver: ``heun`` (EDM's Algorithm 1/2, 2nd order), ``euler``, ``dpmpp_2m`` / ``dpmpp_3m`` (DPM-Solver++
            multistep in log-SNR, ``multistep_samplers``) or ``euler_maruyama`` (the reverse SDE).
        steps: solver steps (Heun: 2 steps - 1 network evaluations; the others one each).
        spacing, rho: the grid of ``ode_samplers.time_grid``: ``karras`` (EDM's rho spacing of noise levels,
            rho 7), ``uniform`` in t, or ``log_snr``.
        S_churn, S_tmin, S_tmax, S_noise: EDM's stochastic churn (Algorithm 2; euler and heun only); 0 churn: the
            deterministic ODE.
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

    def timesteps(self, space: NoiseSchedule | GaussianProcess) -> list[float]:
        """The time of every network evaluation (NFE entries): the schedule's (fractional) timesteps for VP, the
        process's own times otherwise."""
        return self.ode.evaluation_times(as_process(space))

    def __call__(self, denoiser: Denoiser | ContinuousDenoiser | ClassifierFreeGuidance,
                 space: NoiseSchedule | GaussianProcess, x_T: Tensor, generator: torch.Generator | None = None,
                 cond: Any = None) -> Tensor:
        self.ode.progress = self.progress
        base = denoiser.denoiser if isinstance(denoiser, ClassifierFreeGuidance) else denoiser
        if isinstance(base, ContinuousDenoiser):  # EDM, flow: the (guided) denoiser is the solver's denoise
            return self.ode(denoiser, base.process, x_T, generator, cond)
        process = as_process(space)
        return self.ode(vp_denoise_fn(denoiser, process), process, x_T, generator, cond)



def as_process(space: NoiseSchedule | GaussianProcess) -> GaussianProcess:
    """The process of a sampler's ``space``: a VP model's schedule becomes its ``VPProcess``."""
    return space if isinstance(space, GaussianProcess) else VPProcess(space)


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
