"""Reverse-process samplers. Each is ``sampler(model, schedule, x_T, generator) -> x_0``.

``model(x_t, t) -> (x0_hat, eps_hat)`` is the denoiser: the network's output converted by its
prediction type (see ``ddpm.predictions``), so samplers never know what the network predicts.
Sampling is an explicit loop over (t, t_next) pairs; no state is kept between calls.

Notation: timesteps are 0-based (t = T - 1 is the noisiest trained step); t_next = -1 stands for
the clean image, where abar = 1. ``timesteps(schedule)`` gives the t at which a sampler calls the
model, from T - 1 downwards.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, extract

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

VARIANCES = ("fixed_small", "fixed_large")
SPACINGS = ("linspace", "uniform", "trailing", "quadratic", "logsnr")


def reverse_log_variance(schedule: NoiseSchedule, variance: str, t: Tensor, ndim: int) -> Tensor:
    """log sigma_t^2 of the fixed-variance reverse step p(x_{t-1} | x_t), shaped to broadcast.

    ``fixed_small``: beta~_t (with beta~_0 replaced by beta~_1, as log 0 = -inf);
    ``fixed_large``: beta_t (with beta_0 replaced by beta~_1, so the decoder stays small; improved-diffusion).
    """
    if variance == "fixed_small":
        return extract(schedule.posterior_log_variance_clipped, t, ndim)
    if variance == "fixed_large":
        large = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]).log()
        return extract(large, t, ndim)
    raise ConfigError(f"variance={variance!r} is not allowed: choose one of {list(VARIANCES)}")


def timestep_sequence(schedule: NoiseSchedule, steps: int, spacing: str = "linspace") -> list[int]:
    """The ``steps`` timesteps a fast sampler evaluates, strictly decreasing from T - 1.

    ``linspace`` (alias ``uniform``): round(linspace(T-1, 0, steps)), ends at 0.
        T=1000, 10 steps: [999, 888, 777, 666, 555, 444, 333, 222, 111, 0].
    ``quadratic``: round(linspace(0, sqrt(T-1), steps)^2) reversed, dense near 0 (the DDIM paper's
        quadratic sequence, stretched from its 0.8 T to T - 1); ends at 0.
    ``trailing``: round(T - i T/steps) - 1 (Lin et al. 2024, Table 2): a uniform stride T/steps
        anchored at T - 1 whose next point is the clean image (t = -1), so the last model call is
        at T/steps - 1. T=1000, 10 steps: [999, 899, ..., 99].
    ``logsnr``: uniform in log-SNR lambda_t between t = T-1 and t = 0 (Lu et al. 2022), ends at 0.
    Rounding collisions (many steps on a short schedule) are pushed apart, never dropped.
    """
    T = schedule.num_timesteps
    if spacing not in SPACINGS:
        raise ConfigError(f"spacing={spacing!r} is not allowed: choose one of {list(SPACINGS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ConfigError(f"steps={steps!r} is not allowed: use an integer from 1 to the schedule's T={T}")
    if spacing in ("linspace", "uniform"):
        ts = np.linspace(T - 1, 0, steps)
    elif spacing == "quadratic":
        ts = np.linspace(math.sqrt(T - 1), 0, steps) ** 2
    elif spacing == "trailing":
        ts = T - np.arange(steps) * (T / steps) - 1
    else:  # logsnr: the t whose lambda is nearest to each point of a uniform lambda grid
        lam = 0.5 * schedule.snr.double().log().cpu().numpy()  # (T,), decreasing in t
        grid = np.linspace(lam[-1], lam[0], steps)
        ts = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)
    ts = np.round(ts).astype(np.int64)
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


def _abar(schedule: NoiseSchedule) -> Callable[[int], float]:
    """abar_t as a Python float (float64 arithmetic on the host), with abar_{-1} = 1."""
    abar = schedule.alphas_cumprod.double().cpu().tolist()
    return lambda t: 1.0 if t < 0 else abar[t]


def _call(model: Denoiser, x: Tensor, t_int: int, clip: bool, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) at timestep t_int; with ``clip``, x0_hat is clipped to [-1, 1] and eps_hat
    recomputed from it so the pair stays consistent with x_t."""
    t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
    x0, eps = model(x, t)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = schedule.eps_from_x0(x, t, x0)
    return x0, eps


class DDPMSampler:
    """Ancestral sampling, Algorithm 2 of Ho et al. 2020, with fixed reverse variance.

    x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z,  z ~ N(0, I), and the mean alone at the last step.

    Args:
        variance: ``fixed_small`` (sigma_t^2 = beta~_t, the posterior variance) or
            ``fixed_large`` (sigma_t^2 = beta_t); the paper found both give similar samples.
        clip_denoised: clip the predicted x_0 to [-1, 1] before forming the posterior mean.
        noise_scale: multiplies sigma_t z; 1 is DDPM, 0 keeps the posterior mean alone, which
            collapses samples towards the data average (shown by the toy-diffusion plots).
        progress: show a progress bar over the steps.
    """

    name = "ddpm"

    def __init__(
        self, variance: str = "fixed_small", clip_denoised: bool = True, noise_scale: float = 1.0, progress: bool = False
    ):
        if variance not in VARIANCES:
            raise ConfigError(f"variance={variance!r} is not allowed: choose one of {list(VARIANCES)}")
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.noise_scale = noise_scale
        self.progress = progress

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """All T steps: [T-1, ..., 0]."""
        return list(range(schedule.num_timesteps - 1, -1, -1))

    @torch.no_grad()
    def __call__(
        self, model: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x = x_T.float()  # (B, C, H, W)
        all_t = torch.arange(schedule.num_timesteps, device=x.device)
        sigmas = self.noise_scale * (0.5 * reverse_log_variance(schedule, self.variance, all_t, 1)).exp()  # (T,), once
        pairs = step_pairs(self.timesteps(schedule))
        for t_int, t_next in tqdm(pairs, desc="ddpm", disable=not self.progress, leave=False):
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
            x0, _ = model(x, t)
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            mean, _, _ = schedule.posterior(x0, x, t)  # mu~_t   (DDPM Eq. 7)
            if t_next < 0:
                x = mean  # the last step returns the mean (no noise added to x_0)
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + extract(sigmas, t, x.ndim) * z
        return x


class _SubsequenceSampler:
    """What DDIM and DPM-Solver share: ``steps`` model calls at ``timestep_sequence(schedule, steps, spacing)``."""

    def __init__(self, steps: int, spacing: str, clip_denoised: bool, progress: bool):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps={steps!r} is not allowed: use a positive integer such as 20 or 50")
        if spacing not in SPACINGS:
            raise ConfigError(f"spacing={spacing!r} is not allowed: choose one of {list(SPACINGS)}")
        if not isinstance(clip_denoised, bool):
            raise ConfigError(f"clip_denoised={clip_denoised!r} is not allowed: use true or false")
        self.steps, self.spacing = steps, spacing
        self.clip_denoised, self.progress = clip_denoised, progress

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        return timestep_sequence(schedule, self.steps, self.spacing)


class DDIMSampler(_SubsequenceSampler):
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models") on a subsequence of timesteps.

    x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_hat + sigma z          (Eq. 12)
    sigma  = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'})            (Eq. 16)

    eta = 0 is the deterministic implicit model; eta = 1 over all T steps is DDPM with
    sigma_t^2 = beta~_t (``fixed_small``) and draws the same noise in the same order.

    Args:
        steps: number of model calls, at ``timestep_sequence(schedule, steps, spacing)``.
        eta: scale of the noise, 0 (deterministic) to 1 (DDPM-like).
        spacing: ``linspace`` (= ``uniform``), ``trailing``, ``quadratic`` or ``logsnr``.
        clip_denoised: clip x0_hat to [-1, 1] (and recompute eps_hat from it).
        progress: show a progress bar over the steps.
    """

    name = "ddim"

    def __init__(
        self, steps: int = 50, eta: float = 0.0, spacing: str = "linspace", clip_denoised: bool = True, progress: bool = False
    ):
        super().__init__(steps, spacing, clip_denoised, progress)
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta={eta!r} is not allowed: use a value in [0, 1] (0 deterministic, 1 DDPM-like)")
        self.eta = float(eta)

    @torch.no_grad()
    def __call__(
        self, model: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        abar = _abar(schedule)
        x = x_T.float()  # (B, C, H, W)
        pairs = step_pairs(self.timesteps(schedule))
        for t, t_next in tqdm(pairs, desc="ddim", disable=not self.progress, leave=False):
            x0, eps = _call(model, x, t, self.clip_denoised, schedule)
            a, a_next = abar(t), abar(t_next)
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
    first order, i.e. "denoise to x_0". Deterministic: ``generator`` is not used.

    Args:
        steps: number of model calls (10-25 are typical), at ``timestep_sequence(schedule, steps, spacing)``.
        spacing: ``logsnr`` (uniform steps h, the paper's choice for pixel models), ``linspace``
            (= ``uniform``), ``trailing`` or ``quadratic``. With ``linspace`` on the linear schedule
            the step into t = 0 is several times longer in lambda than the one before, and the
            second-order extrapolation over it overshoots (20 steps: worse than DDIM).
        clip_denoised: clip x0_hat to [-1, 1] (thresholding in the paper's terms, for pixel data).
        progress: show a progress bar over the steps.
    """

    name = "dpm_solver"

    def __init__(self, steps: int = 20, spacing: str = "logsnr", clip_denoised: bool = True, progress: bool = False):
        super().__init__(steps, spacing, clip_denoised, progress)

    @torch.no_grad()
    def __call__(
        self, model: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        abar = _abar(schedule)

        def lam(t: int) -> float:  # lambda_t = log(alpha_t / sigma_t) = 0.5 log SNR
            return 0.5 * (math.log(abar(t)) - math.log1p(-abar(t)))

        x = x_T.float()  # (B, C, H, W)
        x0_prev, h_prev = None, None  # the previous step's data prediction and log-SNR step
        pairs = step_pairs(self.timesteps(schedule))
        for t, t_next in tqdm(pairs, desc="dpm-solver++", disable=not self.progress, leave=False):
            x0, _ = _call(model, x, t, self.clip_denoised, schedule)
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


__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "Denoiser",
    "reverse_log_variance",
    "step_pairs",
    "timestep_sequence",
]
