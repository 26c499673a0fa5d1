"""Reverse-process samplers. Each is ``sampler(denoiser, schedule, x_T, generator, cond=None) -> x_0``.

``denoiser(x_t, t, cond) -> (x0_hat, eps_hat, log_variance)`` is a ``ddpm.diffusion.denoiser.Denoiser``
(or anything that wraps one, e.g. guidance): it owns what the network predicts, the clipping of
x0_hat and the reverse variance, so samplers know none of them.
Sampling is an explicit loop over (t, t_next) pairs; no state is kept between calls.

Notation: timesteps are 0-based (t = T - 1 is the noisiest trained step); t_next = -1 stands for
the clean image, where abar = 1. ``timesteps(schedule)`` gives the t at which a sampler calls the
denoiser, from T - 1 downwards. abar on the host is the schedule's float64 ``abar(t)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm.diffusion.denoiser import DenoiserOutput, at_timestep
from ddpm.diffusion.schedules import NoiseSchedule, respace
from ddpm.diffusion.timesteps import SPACINGS, check_steps, step_pairs, timestep_sequence
from ddpm.errors import ConfigError

Denoiser = Callable[..., DenoiserOutput]  # (x_t, t, cond=None) -> DenoiserOutput

class Sampler:
    """What every sampler shares: a name, the timesteps it visits, and an optional progress bar over them.

    ``sampler(denoiser, schedule, x_T, generator=None, cond=None) -> x_0``; ``generator`` draws all
    added noise, ``cond`` goes to every denoiser call.
    """

    name = "sampler"
    progress = False

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        raise NotImplementedError

    def pairs(self, schedule: NoiseSchedule):
        """(t, t_next) for every step, shown as a progress bar when ``progress`` is set."""
        return tqdm(step_pairs(self.timesteps(schedule)), desc=self.name, disable=not self.progress, leave=False)


class DDPMSampler(Sampler):
    """Ancestral sampling, Algorithm 2 of Ho et al. 2020, over all T steps or ``steps`` of them.

    x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z,  z ~ N(0, I), and the mean alone at the last step.
    sigma_t^2 is the denoiser's reverse variance (``Denoiser.variance``: beta~_t, beta_t or learned).

    Respaced (``steps`` = K < T; Nichol & Dhariwal 2021, Sec. 4 and improved-diffusion's
    ``respace.py``): the same ancestral step on the K kept timesteps S of
    ``timestep_sequence(schedule, K, spacing)``, a diffusion whose betas are recomputed from abar at
    the kept steps, beta'_k = 1 - abar_{S_k} / abar_{S_{k-1}} (``schedules.respace``): the posterior
    mean uses beta'_k, and the variance keeps its place w between log beta~ and log beta
    (``NoiseSchedule.variance_fraction``: 0 for fixed_small, 1 for fixed_large, the net's (v+1)/2 for
    learned_range) and takes it between log beta~'_k and log beta'_k, as the paper's learned variance does.

    Args:
        noise_scale: multiplies sigma_t z; 1 is DDPM, 0 keeps the posterior mean alone, which
            collapses samples towards the data average (shown by the toy-diffusion plots).
        progress: show a progress bar over the steps.
        steps: None: all T steps. K in [1, T]: respaced to K denoiser calls.
        spacing: where the K steps lie (``timestep_sequence``): ``linspace`` (= ``uniform``, as
            improved-diffusion's evenly strided steps), ``trailing``, ``quadratic`` or ``logsnr``.
    """

    name = "ddpm"

    def __init__(self, noise_scale: float = 1.0, progress: bool = False, steps: int | None = None,
                 spacing: str = "linspace"):
        if not noise_scale >= 0:
            raise ConfigError(f"noise_scale={noise_scale!r} is not allowed: use 0 (posterior mean only) to 1 (DDPM)")
        if steps is not None:
            check_steps(steps)
        if spacing not in SPACINGS:
            raise ConfigError(f"spacing={spacing!r} is not allowed: choose one of {list(SPACINGS)}")
        self.noise_scale = float(noise_scale)
        self.progress, self.steps, self.spacing = progress, steps, spacing

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """All T steps: [T-1, ..., 0]; or the ``steps`` kept ones, from T-1 down."""
        if self.steps is not None:
            return timestep_sequence(schedule, self.steps, self.spacing)
        return list(range(schedule.num_timesteps - 1, -1, -1))

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator=None, cond=None) -> Tensor:
        if self.steps is not None:
            return self._respaced(denoiser, schedule, x_T, generator, cond)
        x = x_T.float()  # (B, C, H, W)
        for t_int, t_next in self.pairs(schedule):
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)  # (B,)
            x0, _, log_variance = denoiser(x, t, cond)
            mean, _, _ = schedule.posterior(x0, x, t)  # 1. mu~_t(x0_hat, x_t)   (DDPM Eq. 7)
            if t_next < 0:
                x = mean  # 2. the last step returns the mean (no noise added to x_0)
            else:  # 2. x_{t-1} = mu~_t + sigma_t z   (Algorithm 2, line 4)
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + self.noise_scale * (0.5 * log_variance).exp() * z
        return x

    def _respaced(self, denoiser: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator, cond) -> Tensor:
        """The loop above on the respaced diffusion: index k for its buffers, the original t for the denoiser."""
        kept = self.timesteps(schedule)  # [S_{K-1}, ..., S_0], decreasing
        spaced = respace(schedule, kept).to(x_T.device)
        x = x_T.float()  # (B, C, H, W)
        for i, (t_int, t_next) in enumerate(self.pairs(schedule)):
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)  # (B,) original timestep
            k = torch.full_like(t, len(kept) - 1 - i)  # (B,) its index in the respaced diffusion
            x0, _, log_variance = denoiser(x, t, cond)
            mean, _, _ = spaced.posterior(x0, x, k)  # 1. mu~'_k(x0_hat, x_t) with the respaced betas
            if t_next < 0:
                x = mean
            else:  # 2. sigma'^2 at the same place w between log beta~'_k and log beta'_k
                w = schedule.variance_fraction(log_variance, t)  # (B, 1 or C, ...)
                log_variance = spaced.learned_log_variance(2 * w - 1, k)
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + self.noise_scale * (0.5 * log_variance).exp() * z
        return x


class _SubsequenceSampler(Sampler):
    """What DDIM and DPM-Solver share: ``steps`` denoiser calls at ``timestep_sequence(schedule, steps, spacing)``."""

    def __init__(self, steps: int, spacing: str, progress: bool):
        check_steps(steps)
        if spacing not in SPACINGS:
            raise ConfigError(f"spacing={spacing!r} is not allowed: choose one of {list(SPACINGS)}")
        self.steps, self.spacing, self.progress = steps, spacing, progress

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        return timestep_sequence(schedule, self.steps, self.spacing)


class DDIMSampler(_SubsequenceSampler):
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models") on a subsequence of timesteps.

    x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_hat + sigma z          (Eq. 12)
    sigma  = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'})            (Eq. 16)

    eta = 0 is the deterministic implicit model; eta = 1 over all T steps is DDPM with
    sigma_t^2 = beta~_t (``fixed_small``) and draws the same noise in the same order.

    Args:
        steps: number of denoiser calls, at ``timestep_sequence(schedule, steps, spacing)``.
        eta: scale of the noise, 0 (deterministic) to 1 (DDPM-like).
        spacing: ``linspace`` (= ``uniform``), ``trailing``, ``quadratic`` or ``logsnr``.
        progress: show a progress bar over the steps.
    """

    name = "ddim"

    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str = "linspace", progress: bool = False):
        super().__init__(steps, spacing, progress)
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta={eta!r} is not allowed: use a value in [0, 1] (0 deterministic, 1 DDPM-like)")
        self.eta = float(eta)

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator=None, cond=None) -> Tensor:
        x = x_T.float()  # (B, C, H, W)
        for t, t_next in self.pairs(schedule):
            x0, eps, _ = at_timestep(denoiser, x, t, cond)
            a, a_next = schedule.abar(t), schedule.abar(t_next)
            # 1. sigma_t(eta)   (Eq. 16); 0 on the last step, where abar_next = 1
            sigma = self.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
            # 2. x_{t'} = sqrt(abar') x0 + "direction pointing to x_t" + random noise   (Eq. 12)
            x = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
        return x


class DPMSolverSampler(_SubsequenceSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): multistep second order, data prediction.

    Notation: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t),
    h = lambda_{t'} - lambda_t for a step t -> t'. With D the (extrapolated) data prediction,
        x_{t'} = (sigma_{t'} / sigma_t) x_t - alpha_{t'} (e^{-h} - 1) D.
    The first step uses D = x0_hat(t) (first order); later steps use
        D = (1 + 1/(2r)) x0_hat(t) - 1/(2r) x0_hat(t_prev),  r = h_prev / h.
    The last step goes to the clean image (lambda = +inf), where the update is D = x0_hat(t):
    first order, i.e. "denoise to x_0". Deterministic: ``generator`` is not used. Clipping x0_hat
    (the denoiser's ``clip_denoised``) is the paper's thresholding, for pixel data.

    Args:
        steps: number of denoiser calls (10-25 are typical), at ``timestep_sequence(schedule, steps, spacing)``.
        spacing: ``logsnr`` (uniform steps h, the paper's choice for pixel models), ``linspace``
            (= ``uniform``), ``trailing`` or ``quadratic``. With ``linspace`` on the linear schedule
            the step into t = 0 is several times longer in lambda than the one before, and the
            second-order extrapolation over it overshoots (20 steps: worse than DDIM).
        progress: show a progress bar over the steps.
    """

    name = "dpm_solver"

    def __init__(self, steps: int = 20, spacing: str = "logsnr", progress: bool = False):
        super().__init__(steps, spacing, progress)

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator=None, cond=None) -> Tensor:
        abar = schedule.abar

        def lam(t: int) -> float:  # lambda_t = log(alpha_t / sigma_t) = 0.5 log SNR
            return 0.5 * (math.log(abar(t)) - math.log1p(-abar(t)))

        x = x_T.float()  # (B, C, H, W)
        x0_prev, h_prev = None, None  # the previous step's data prediction and log-SNR step
        for t, t_next in self.pairs(schedule):
            x0 = at_timestep(denoiser, x, t, cond).x0
            if t_next < 0:
                x = x0  # lambda = +inf: alpha = 1, sigma = 0, e^{-h} = 0
                break
            h = lam(t_next) - lam(t)
            alpha_next, ratio = math.sqrt(abar(t_next)), math.sqrt((1 - abar(t_next)) / (1 - abar(t)))
            if x0_prev is None:
                d = x0  # 1. first step: DPM-Solver++(1), i.e. DDIM
            else:
                r = h_prev / h  # 2. second-order multistep correction: D_i, r_i of Algorithm 2
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = ratio * x - alpha_next * math.expm1(-h) * d  # 3. the exponential-integrator update of Algorithm 2
            x0_prev, h_prev = x0, h
        return x


__all__ = ["DDIMSampler", "DDPMSampler", "DPMSolverSampler", "Denoiser", "Sampler", "step_pairs", "timestep_sequence"]
