"""The simple diffusion loss of DDPM, on any prediction target, with optional min-SNR weighting."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddpm.errors import ConfigError
from ddpm.predictions import get_prediction
from ddpm.schedules import NoiseSchedule, extract


class SimpleLoss:
    """L_simple = E_{t, x_0, eps} || target - net(x_t, t) ||^2   (Ho et al. 2020, Eq. 14).

    Args:
        prediction_type: what the network predicts, ``epsilon``, ``x0`` or ``v``.
        min_snr_gamma: if set, weight each sample by the min-SNR-gamma rule of Hang et al. 2023
            (gamma=5 in the paper); None gives the unweighted simple loss.
    """

    def __init__(self, prediction_type: str = "epsilon", min_snr_gamma: float | None = None):
        self.prediction = get_prediction(prediction_type)
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ConfigError(f"min_snr_gamma={min_snr_gamma!r} is not allowed: use a positive number or null")
        self.min_snr_gamma = min_snr_gamma

    def __call__(
        self, net: nn.Module, schedule: NoiseSchedule, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the timesteps t (B,) they were drawn at; math in float32."""
        x0 = x0.float()  # (B, C, H, W)
        t = schedule.sample_timesteps(x0.shape[0], x0.device, generator)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = schedule.q_sample(x0, t, eps)
        out = net(x_t, t).float()
        target = self.prediction.target(schedule, x0, eps, t)
        loss = (out - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        if self.min_snr_gamma is not None:
            snr = extract(schedule.snr, t, 1)
            loss = loss * self.prediction.min_snr_weight(snr, self.min_snr_gamma)
        return loss, t
