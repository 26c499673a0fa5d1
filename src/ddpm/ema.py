"""Exponential moving average of the network weights, on torch's ``AveragedModel``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ddpm.errors import ConfigError


def ema_decay_fn(decay: float, warmup: bool):
    """A ``multi_avg_fn`` for AveragedModel: theta_ema <- d theta_ema + (1 - d) theta.

    With warm-up, d_n = min(decay, (1 + n) / (10 + n)) after n updates (the schedule of
    TensorFlow's ExponentialMovingAverage with num_updates), so a checkpoint taken after a few
    hundred steps already samples from a sensible average instead of the random init.
    The decay is computed on the device from AveragedModel's counter: no host sync.
    """

    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        d = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay) if warmup else torch.tensor(decay)
        weight = (1 - d).to(device=ema_params[0].device, dtype=ema_params[0].dtype)
        torch._foreach_lerp_(ema_params, params, weight)

    return update


def make_ema(net: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """An EMA copy of ``net`` that averages its parameters only (never buffers)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema_decay={decay!r} is not allowed: it must lie in [0, 1), e.g. 0.9999")
    ema = AveragedModel(net, multi_avg_fn=ema_decay_fn(decay, warmup), use_buffers=False)
    ema.requires_grad_(False)  # the optimizer and DDP must not see these
    return ema
