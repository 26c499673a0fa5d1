"""Where training puts its noise on a continuous-time process, and how much each level weighs.

    sigma = edm_training_sigma(n, generator)        EDM: ln sigma ~ N(P_mean, P_std^2)   (Karras et al. 2022, Table 1)
    w = edm_loss_weight(sigma, sigma_data)           EDM: lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2
    t = logit_normal_t(n, generator, m, s)           SD3: t = sigmoid(m + s z), z ~ N(0, 1)   (Esser et al. 2024, Eq. 19)
    t = uniform_t(n, generator)                      rectified flow: t ~ U(0, 1)             (Liu et al. 2023)
    t = shifted_time(t, shift)                       SD3's resolution shift: t' = shift t / (1 + (shift - 1) t)

All return float32 tensors (n,) drawn from ``generator`` on its device (float64 with ``dtype``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm.errors import ConfigError


def positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={value!r} is not allowed: use a number > 0")
    return float(value)


def _normal(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(n, generator=generator, device=device, dtype=dtype)


def edm_training_sigma(n: int, generator: torch.Generator | None = None, p_mean: float = -1.2, p_std: float = 1.2,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """(n,) noise levels with ln sigma ~ N(p_mean, p_std^2): EDM's training distribution (Table 1: -1.2, 1.2)."""
    if isinstance(p_mean, bool) or not isinstance(p_mean, (int, float)):
        raise ConfigError(f"loss.p_mean={p_mean!r} is not allowed: use a number (EDM: -1.2)")
    p_std = positive_number("loss.p_std", p_std)
    return torch.exp(p_mean + p_std * _normal(n, generator, dtype))


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2: the weight that gives the preconditioned
    network F an effective loss of unit weight at every noise level (Karras et al. 2022, Eq. 8 and App. B.6)."""
    sigma_data = positive_number("process.sigma_data", sigma_data)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def logit_normal_t(n: int, generator: torch.Generator | None = None, m: float = 0.0, s: float = 1.0,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """(n,) times t = sigmoid(m + s z), z ~ N(0, 1): SD3's logit-normal sampling of the flow time (m = 0, s = 1),
    which trains the middle of the path, where the velocity is hardest to predict, more often."""
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise ConfigError(f"loss.m={m!r} is not allowed: use a number (SD3: 0)")
    s = positive_number("loss.s", s)
    return torch.sigmoid(m + s * _normal(n, generator, dtype))


def uniform_t(n: int, generator: torch.Generator | None = None, t_min: float = 0.0, t_max: float = 1.0,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """(n,) times uniform in [t_min, t_max) (rectified flow; Lipman et al. 2023)."""
    if not 0.0 <= t_min < t_max:
        raise ConfigError(f"t_min={t_min!r}, t_max={t_max!r} are not allowed: use 0 <= t_min < t_max")
    device = generator.device if generator is not None else torch.device("cpu")
    return t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device, dtype=dtype)


def shifted_time(t: Tensor, shift: float = 1.0) -> Tensor:
    """SD3's time shift (Esser et al. 2024, Sec. 5.3.2): t' = shift t / (1 + (shift - 1) t), which keeps t = 0 and 1
    and moves the middle towards noise for shift > 1 (more pixels: more noise needed to destroy the same signal);
    the noise level scales by ``shift``: t' / (1 - t') = shift t / (1 - t)."""
    shift = positive_number("shift", shift)
    return shift * t / (1 + (shift - 1) * t)
