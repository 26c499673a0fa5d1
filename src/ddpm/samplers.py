"""Reverse-process samplers. Each is ``sampler(model, schedule, x_T, generator) -> x_0``.

``model(x_t, t) -> (x0_hat, eps_hat)`` is the denoiser: the network's output converted by its
prediction type (see ``ddpm.predictions``), so samplers never know what the network predicts.
Sampling is an explicit loop over (t, t_next) pairs; no state is kept between calls.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm.errors import ConfigError
from ddpm.schedules import NoiseSchedule, extract

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

VARIANCES = ("fixed_small", "fixed_large")


class DDPMSampler:
    """Ancestral sampling, Algorithm 2 of Ho et al. 2020, with fixed reverse variance.

    x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z,  z ~ N(0, I), and the mean alone at the last step.

    Args:
        variance: ``fixed_small`` (sigma_t^2 = beta~_t, the posterior variance) or
            ``fixed_large`` (sigma_t^2 = beta_t); the paper found both give similar samples.
        clip_denoised: clip the predicted x_0 to [-1, 1] before forming the posterior mean.
        progress: show a progress bar over the steps.
    """

    def __init__(self, variance: str = "fixed_small", clip_denoised: bool = True, progress: bool = False):
        if variance not in VARIANCES:
            raise ConfigError(f"variance={variance!r} is not allowed: choose one of {list(VARIANCES)}")
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.progress = progress

    def log_variance(self, schedule: NoiseSchedule, t: Tensor, ndim: int) -> Tensor:
        """log sigma_t^2 of the reverse step at t, shaped to broadcast."""
        if self.variance == "fixed_small":
            return extract(schedule.posterior_log_variance_clipped, t, ndim)
        # beta_t, with beta_0 replaced by beta~_1 so the decoder variance stays small (improved-diffusion).
        large = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]]).log()
        return extract(large, t, ndim)

    @torch.no_grad()
    def __call__(
        self, model: Denoiser, schedule: NoiseSchedule, x_T: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        x = x_T.float()  # (B, C, H, W)
        steps = range(schedule.num_timesteps - 1, -1, -1)
        for t_int in tqdm(steps, desc="ddpm", disable=not self.progress, leave=False):
            t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
            x0, _ = model(x, t)
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            mean, _, _ = schedule.posterior(x0, x, t)
            if t_int == 0:
                x = mean  # the last step returns the mean (no noise added to x_0)
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = mean + (0.5 * self.log_variance(schedule, t, x.ndim)).exp() * z
        return x
