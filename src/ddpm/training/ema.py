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
    The first update (n = 0) copies theta, as AveragedModel does. Everything, the decay included,
    is computed on the device from AveragedModel's counter: no host sync.
    """

    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor, enabled: Tensor | None = None) -> None:
        n = num_averaged.to(device=ema_params[0].device, dtype=torch.float32)
        d = torch.clamp((1 + n) / (10 + n), max=decay) if warmup else torch.full_like(n, decay)
        weight = torch.where(n == 0, 1.0, 1.0 - d)
        if enabled is not None:  # weight 0 leaves the average exactly as it was
            weight = torch.where(enabled, weight, 0.0)
        weight = weight.to(ema_params[0].dtype)
        torch._foreach_lerp_(ema_params, params, weight)

    return update


class EMA(AveragedModel):
    """AveragedModel whose update never waits for the GPU.

    torch's ``update_parameters`` reads its counter on the host twice per call (``n_averaged == 0``),
    which stalls the CPU until the GPU has finished the step. Here the counter stays on the device:
    the copy-on-first-update lives in :func:`ema_decay_fn`, and the update is one ``_foreach_lerp_``
    over the parameters (buffers are copied from the network, never averaged).
    """

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, enabled: Tensor | None = None) -> None:
        """Average ``model``'s parameters in; ``enabled``: a device-side bool (), False skips this update."""
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"EMA holds {len(ema_params)} parameters but the network has {len(params)}")
        self.multi_avg_fn(ema_params, params, self.n_averaged, enabled)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.n_averaged += 1 if enabled is None else enabled.to(self.n_averaged.device, self.n_averaged.dtype)


def make_ema(net: nn.Module, decay: float, warmup: bool = True) -> EMA:
    """An EMA copy of ``net`` that averages its parameters only (never buffers)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema_decay={decay!r} is not allowed: it must lie in [0, 1), e.g. 0.9999")
    ema = EMA(net, multi_avg_fn=ema_decay_fn(decay, warmup), use_buffers=False)
    ema.requires_grad_(False)  # the optimizer and DDP must not see these
    return ema
