"""Training losses on continuous time, ``loss(denoiser, x0, generator, cond=None) -> (per-sample loss (B,), t (B,))``
like ``losses.py``, for a ``continuous_denoiser.ContinuousDenoiser``; t and then eps are drawn from ``generator``.

    EDMLoss            lambda(nu) ||D(x_t; nu) - x0||^2, ln nu ~ N(P_mean, P_std^2)     (Karras et al. 2022, Eq. 2, 8)
    FlowMatchingLoss   ||u_hat(x_t, t) - u||^2, u = eps - x0, t logit-normal or uniform  (Lipman et al. 2023; SD3)

Each squared error is the mean over the elements of a sample (as ``losses.SimpleLoss``), so the loss does not grow
with the image size; t is the process's own time (EDM: the noise level; flow: in [0, 1]). The math runs in x0's
dtype promoted to at least float32; the times are drawn in float32 (as in training) and cast to it.

VP on continuous time needs nothing new yet: ``losses.SimpleLoss`` trains eps / x0 / v on integer timesteps, and a
``ContinuousDenoiser(net, VPProcess(schedule), "eps")`` gives that net's x0_hat at any fractional t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.noise_levels import (positive_number, edm_loss_weight, edm_training_sigma, logit_normal_t, shifted_time,
                                         uniform_t)
from ddpm.diffusion.processes import EDMProcess, FlowProcess, process_name
from ddpm.errors import ConfigError, check_choice

FLOW_TIMES = ("logit_normal", "uniform")


def _float_dtype(x0: Tensor) -> torch.dtype:
    return torch.promote_types(x0.dtype, torch.float32)


def _name(denoiser) -> str:
    """The ``process=`` choice of a denoiser's process: vp (the discrete Denoiser), edm, flow."""
    return f"process={process_name(getattr(denoiser, 'process', None))}"


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < float("inf"):
        raise ConfigError(f"{name}={value!r} is not allowed: use a finite number")
    return float(value)


class EDMLoss:
    """EDM's training loss (Karras et al. 2022, Eq. 2 and Table 1):

        E_{nu, x0, eps} lambda(nu) || D(x0 + nu eps; nu) - x0 ||^2,   ln nu ~ N(p_mean, p_std^2),
        lambda(nu) = (nu^2 + sd^2) / (nu sd)^2 = 1 / c_out^2        (``noise_levels.edm_loss_weight``)

    per sample the mean over elements; equal to k-diffusion's ``layers.Denoiser.loss`` (whose F-space loss
    ||F - (x0 - c_skip x) / c_out||^2 is this one, since D - x0 = c_out (F - target)). On FlowProcess the level nu is
    put at t = nu / (1 + nu), x_t = alpha (x0 + nu eps), and D sees x_t / alpha: the same loss. Any prediction
    works (D = x0_hat); ``edm`` is the one the weighting is made for. sd is the denoiser's ``sigma_data``.

    Args:
        p_mean, p_std: the log-normal's mean and std (EDM: -1.2, 1.2).
    """

    processes = (EDMProcess, FlowProcess)  # noise levels over (0, inf); VP's stop at nu(T-1)

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean = _number("loss.p_mean", p_mean)
        self.p_std = positive_number("loss.p_std", p_std)

    def check(self, denoiser: ContinuousDenoiser) -> None:
        if not isinstance(getattr(denoiser, "process", None), self.processes):
            raise ConfigError(f"loss=edm needs noise levels in (0, inf): use it with process=edm or process=flow, not "
                              f"{_name(denoiser)}")

    def __call__(self, denoiser: ContinuousDenoiser, x0: Tensor, generator: torch.Generator | None = None,
                 cond: Any = None) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the process times t (B,) they were drawn at."""
        self.check(denoiser)
        dtype, process = _float_dtype(x0), denoiser.process
        x0 = x0.to(dtype)
        nu = edm_training_sigma(x0.shape[0], generator, self.p_mean, self.p_std).to(device=x0.device, dtype=dtype)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=dtype)
        t = nu if isinstance(process, EDMProcess) else process.t_of_noise_level(nu)  # EDM's time is the level
        x_t = process.add_noise(x0, eps, t)
        error = (denoiser.predict(x_t, t, cond)[0] - x0).pow(2).flatten(1).mean(dim=1)  # (B,), never clipped
        return edm_loss_weight(nu, denoiser.sigma_data) * error, t


class FlowMatchingLoss:
    """Conditional flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023; SD3, Esser et al. 2024):

        E_{t, x0, eps} || u_hat(x_t, t) - u ||^2,   x_t = (1 - t) x0 + t eps,   u = eps - x0 (``process.velocity``)

    per sample the mean over elements. u_hat is the net's output for ``prediction=velocity``, else alpha' x0_hat +
    sigma' eps_hat (``ContinuousDenoiser.velocity``). FlowProcess only (t is its time in [0, 1]).

    Args:
        time: ``logit_normal`` (SD3's t = sigmoid(m + s z)) or ``uniform`` (t ~ U[0, 1)).
        m, s: the logit-normal's location and scale (SD3: 0, 1).
        shift: SD3's time shift t' = shift t / (1 + (shift - 1) t) applied to the drawn t (1: none).
    """

    def __init__(self, time: str = "logit_normal", m: float = 0.0, s: float = 1.0, shift: float = 1.0):
        self.time = check_choice("loss.time", time, FLOW_TIMES)
        self.m = _number("loss.m", m)
        self.s = positive_number("loss.s", s)
        self.shift = positive_number("loss.shift", shift)

    def check(self, denoiser: ContinuousDenoiser) -> None:
        if not isinstance(getattr(denoiser, "process", None), FlowProcess):
            raise ConfigError(f"loss=flow_matching draws t in [0, 1], the flow path's time: use it with process=flow, "
                              f"not {_name(denoiser)}")

    def draw_t(self, n: int, generator: torch.Generator | None) -> Tensor:
        """(n,) float32 times: logit-normal or uniform, then shifted."""
        t = logit_normal_t(n, generator, self.m, self.s) if self.time == "logit_normal" else uniform_t(n, generator)
        return t if self.shift == 1.0 else shifted_time(t, self.shift)

    def __call__(self, denoiser: ContinuousDenoiser, x0: Tensor, generator: torch.Generator | None = None,
                 cond: Any = None) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the times t (B,) they were drawn at."""
        self.check(denoiser)
        dtype, process = _float_dtype(x0), denoiser.process
        x0 = x0.to(dtype)
        t = self.draw_t(x0.shape[0], generator).to(device=x0.device, dtype=dtype)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=dtype)
        x_t = process.add_noise(x0, eps, t)
        u = process.velocity(x0, eps, t)
        return (denoiser.velocity(x_t, t, cond) - u).pow(2).flatten(1).mean(dim=1), t
