"""The Denoiser: the one place that turns a network's raw output into what every consumer needs.

    denoiser(x_t, t, cond=None) -> DenoiserOutput(x0, eps, log_variance)

The network predicts eps, x0 or v (``ddpm.diffusion.parameterization``); the Denoiser converts
that to the pair (x0_hat, eps_hat), clips x0_hat to the data range when asked (and recomputes
eps_hat from it, so the pair stays consistent with x_t), and gives the log-variance of the
reverse step p(x_{t-1} | x_t) (a schedule buffer for the fixed variances). Training (the loss
target), the samplers, the likelihood and the plots all go through it, so none of them knows what
the network predicts or how the variance was chosen. Guidance and learned variance wrap or extend
this object; ``cond`` is the condition (None for unconditional models) passed on to the network.

Learned variance (``variance="learned_range"``, Nichol & Dhariwal 2021, "Improved Denoising Diffusion
Probabilistic Models", Sec. 3.1): the network outputs 2C channels along dim 1, the usual prediction
(eps, x0 or v) in the first C and v in the second C, and the reverse step's log-variance is
(v+1)/2 log beta_t + (1-v)/2 log beta~_t per element (``NoiseSchedule.learned_log_variance``).
A fixed variance needs exactly C output channels; the count is checked on every call, and at
construction against the net's ``learn_sigma`` attribute where it has one.

Shapes: x_t (B, C, ...) of the data's shape (channels, or point coordinates, in dim 1); t (B,) integer timesteps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ddpm.diffusion.parameterization import get_prediction
from ddpm.diffusion.schedules import LEARNED_VARIANCE, REVERSE_VARIANCES, NoiseSchedule
from ddpm.errors import ConfigError, check_choice


class DenoiserOutput(NamedTuple):
    """What one denoiser call gives, each of x_t's shape (log_variance broadcastable to it)."""

    x0: Tensor  # x0_hat, clipped to [-1, 1] when the denoiser clips
    eps: Tensor  # eps_hat, consistent with x0_hat: x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat
    log_variance: Tensor  # log sigma_t^2 of p(x_{t-1} | x_t): (B, 1, ...) fixed, (B, C, ...) learned


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A network seen through its parameterization, with clipping and reverse variance.

    Args:
        net: ``net(x_t, t) -> out`` (``net(x_t, t, cond)`` when a condition is given), out of x_t's shape.
        schedule: the noise schedule the network was trained with.
        prediction_type: what the network outputs: ``epsilon``, ``x0`` or ``v``.
        clip_denoised: clip x0_hat to [-1, 1] (pixel data) and recompute eps_hat from it.
        variance: the reverse-step variance, ``fixed_small`` (beta~_t, the posterior variance) or
            ``fixed_large`` (beta_t); Ho et al. 2020 found both give similar samples. ``learned_range``:
            learned by a net with 2C output channels (``learn_sigma``; module docstring).
    """

    net: nn.Module
    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    clip_denoised: bool = True
    variance: str = "fixed_small"

    def __post_init__(self):
        get_prediction(self.prediction_type)  # a ConfigError naming the value if unknown
        check_choice("clip_denoised", self.clip_denoised, (True, False))
        if self.variance not in REVERSE_VARIANCES:
            raise ConfigError(f"variance={self.variance!r} is not allowed: choose one of {list(REVERSE_VARIANCES)}")
        learn_sigma = getattr(self.net, "learn_sigma", None)  # nets that say so: U-Net, MLP
        if isinstance(learn_sigma, bool) and learn_sigma != self.learned:
            raise ConfigError(self._mismatch(f"model.learn_sigma={str(learn_sigma).lower()}"))

    @property
    def learned(self) -> bool:
        """Whether the reverse variance comes from the network (``learned_range``)."""
        return self.variance == LEARNED_VARIANCE

    def _mismatch(self, net: str) -> str:
        if self.learned:
            need, other = "model.learn_sigma=true (2C output channels)", "a fixed variance (fixed_small or fixed_large)"
        else:
            need, other = "C output channels (model.learn_sigma=false)", "denoiser.variance=learned_range"
        return (f"denoiser.variance={self.variance} needs a net with {need}, but the net has {net}: "
                f"use {other} or change the net")

    @property
    def parameterization(self):
        """The prediction type's object: ``target`` for the loss, ``to_x0_eps`` for sampling."""
        return get_prediction(self.prediction_type)

    def replace(self, **changes: Any) -> "Denoiser":
        """A copy with some fields changed, e.g. ``denoiser.replace(net=ema_net)`` or ``clip_denoised=False``."""
        return dataclasses.replace(self, **changes)

    def net_output(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's raw output in float32, (B, ...) like x_t."""
        out = self.net(x_t, t) if cond is None else self.net(x_t, t, cond)
        return out.float()

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> DenoiserOutput:
        return self.from_output(self.net_output(x_t, t, cond), x_t, t)

    def split_output(self, out: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(prediction (B, C, ...), v (B, C, ...) or None for a fixed variance) from a raw output
        (B, 2C or C, ...) at x_t (B, C, ...); a ConfigError when the channel count does not fit ``variance``."""
        channels = x_t.shape[1] * (2 if self.learned else 1)
        if out.ndim != x_t.ndim or out.shape[1] != channels:
            raise ConfigError(self._mismatch(f"{out.shape[1]} output channels for {x_t.shape[1]}-channel data"))
        if not self.learned:
            return out, None
        prediction, v = out.chunk(2, dim=1)
        return prediction, v

    def log_variance(self, t: Tensor, x_t: Tensor, v: Tensor | None = None) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): the fixed buffer (B, 1, ...), or from the net's v (B, C, ...)."""
        if v is None:
            return self.schedule.reverse_log_variance(self.variance, t, x_t.ndim)
        return self.schedule.learned_log_variance(v, t)

    def from_output(self, out: Tensor, x_t: Tensor, t: Tensor) -> DenoiserOutput:
        """(x0_hat, eps_hat, log sigma_t^2) from a raw network output ``out`` (B, C or 2C, ...) at (x_t, t)."""
        prediction, v = self.split_output(out, x_t)
        x0, eps = self.parameterization.to_x0_eps(self.schedule, prediction, x_t, t)
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.schedule.eps_from_x0(x_t, t, x0)
        return DenoiserOutput(x0, eps, self.log_variance(t, x_t, v))


def at_timestep(denoiser, x: Tensor, t_int: int, cond: Any = None) -> DenoiserOutput:
    """Call ``denoiser`` on a batch x (B, ...) that is entirely at timestep ``t_int``."""
    t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
    return denoiser(x, t, cond)
