"""The simple diffusion loss of DDPM, on the denoiser's prediction target, with optional min-SNR weighting."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.schedules import extract
from ddpm.errors import ConfigError


class SimpleLoss:
    """L_simple = E_{t, x_0, eps} || target - net(x_t, t) ||^2   (Ho et al. 2020, Eq. 14).

    The target is what the denoiser's network predicts (eps, x0 or v; ``Denoiser.prediction_type``).

    Args:
        min_snr_gamma: if set, weight each sample by the min-SNR-gamma rule of Hang et al. 2023
            (gamma=5 in the paper); None gives the unweighted simple loss.
    """

    def __init__(self, min_snr_gamma: float | None = None):
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ConfigError(f"min_snr_gamma={min_snr_gamma!r} is not allowed: use a positive number or null")
        self.min_snr_gamma = min_snr_gamma

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None, cond: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the timesteps t (B,) they were drawn at; math in float32."""
        schedule, prediction = denoiser.schedule, denoiser.parameterization
        x0 = x0.float()  # (B, C, H, W)
        t = schedule.sample_timesteps(x0.shape[0], x0.device, generator)  # (B,)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = schedule.q_sample(x0, t, eps)
        out = denoiser.net_output(x_t, t, cond)
        target = prediction.target(schedule, x0, eps, t)
        loss = (out - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        if self.min_snr_gamma is not None:
            snr = extract(schedule.snr, t, 1)
            loss = loss * prediction.min_snr_weight(snr, self.min_snr_gamma)
        return loss, t
