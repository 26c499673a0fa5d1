"""What the network predicts (eps, x0 or v), and the exact conversions to (x_0, eps) that the Denoiser applies.

A prediction type is a small object with two methods, chosen once by name:
    target(schedule, x0, eps, t)        the regression target of the simple loss
    to_x0_eps(schedule, out, x_t, t)    (x_0, eps) implied by the network output
"""

from __future__ import annotations

from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.diffusion.schedules import NoiseSchedule


class EpsilonPrediction:
    """The network predicts the added noise eps (DDPM, Ho et al. 2020)."""

    name = "epsilon"

    def target(self, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps

    def to_x0_eps(self, schedule: NoiseSchedule, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return schedule.x0_from_eps(x_t, t, out), out

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        """min(SNR, gamma) / SNR (Hang et al. 2023, Eq. 7 for the eps target)."""
        return snr.clamp(max=gamma) / snr


class X0Prediction:
    """The network predicts the clean image x_0."""

    name = "x0"

    def target(self, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return x0

    def to_x0_eps(self, schedule: NoiseSchedule, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return out, schedule.eps_from_x0(x_t, t, out)

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        """min(SNR, gamma)."""
        return snr.clamp(max=gamma)


class VPrediction:
    """The network predicts v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)."""

    name = "v"

    def target(self, schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return schedule.v_target(x0, t, eps)

    def to_x0_eps(self, schedule: NoiseSchedule, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return schedule.x0_from_v(x_t, t, out), schedule.eps_from_v(x_t, t, out)

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        """min(SNR, gamma) / (SNR + 1)."""
        return snr.clamp(max=gamma) / (snr + 1)


PREDICTIONS = {p.name: p for p in (EpsilonPrediction(), X0Prediction(), VPrediction())}


def get_prediction(name: str):
    """Look up a prediction type by name: ``epsilon``, ``x0`` or ``v``."""
    if name not in PREDICTIONS:
        raise ConfigError(f"prediction_type={name!r} is not allowed: choose one of {sorted(PREDICTIONS)}")
    return PREDICTIONS[name]
