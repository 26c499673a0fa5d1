"""The continuous-time denoiser: a network seen through its parameterization and preconditioning, on any process.

    denoiser = ContinuousDenoiser(net, process, prediction)
    denoiser(x_t, t, cond=None) -> x0_hat                 the ``ode_samplers`` interface
    denoiser.predict(x_t, t, cond) -> (x0_hat, eps_hat)   consistent with x_t: x_t = alpha x0_hat + sigma eps_hat
    denoiser.velocity(x_t, t, cond) -> u_hat              alpha' x0_hat + sigma' eps_hat (the PF-ODE's dx/dt)
    denoiser.net_output(x_t, t, cond) -> F                the network's raw output

It owns the parameterization and the preconditioning, so the network never knows which process it serves: it is
called ``net(c_in * x, c_noise)`` (``net(c_in * x, c_noise, cond)`` with a condition), x (B, ...) and c_noise (B,)
a float vector, and returns (B, ...) of x's shape (the project's U-Net and DiT take float t: their sinusoidal
``timestep_embedding`` works on ``t.float()``). x_t = alpha(t) x0 + sigma(t) eps (``processes.GaussianProcess``),
t (B,) (or a scalar) the process's own time; nu = sigma / alpha is the noise level.

Predictions (what F is trained to be), and the processes each applies to:

    edm        any process. EDM's preconditioning (Karras et al. 2022, Eq. 7 and Table 1, "EDM" column) on the
               scaled-back x = x_t / alpha at nu: D(x; nu) = c_skip x + c_out F(c_in x; c_noise),
               c_skip = sd^2 / (nu^2 + sd^2), c_out = nu sd / sqrt(nu^2 + sd^2), c_in = 1 / sqrt(nu^2 + sd^2),
               c_noise = ln(nu) / 4 (``processes.edm_preconditioning``); x0_hat = D. On EDMProcess (alpha = 1)
               it is k-diffusion's ``layers.Denoiser``; elsewhere the same D on x_t / alpha (EDM Sec. 4's s(t)).
    velocity   any process. F predicts u = alpha' x0 + sigma' eps (``processes.velocity``; flow: eps - x0), and
               (x0_hat, eps_hat) solve [x_t; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps]:
               x0 = (sigma' x_t - sigma u) / det, eps = (alpha u - alpha' x_t) / det, det = alpha sigma' - sigma alpha'
               (flow: det = 1, x0 = x_t - t u; EDM: u = eps; VP: det = -alpha sigma lambda'(t) / 2 > 0).
    eps, x0, v VPProcess only (alpha^2 + sigma^2 = 1, where these targets have unit scale at every t): F predicts
               eps, x0, or v = alpha eps - sigma x0 (Salimans & Ho 2022, written with the path's alpha, sigma);
               the conversions divide by alpha^2 + sigma^2, so they are exact inverses of the targets.
               For EDM or flow use ``edm`` or ``velocity`` (their eps / x0 targets would need their own scalings).

What the network gets (c_in, c_noise) besides for ``edm`` (above):

    VPProcess    c_in = 1, c_noise = t, the fractional timestep in [0, T-1]: today's nets see today's inputs.
    FlowProcess  c_in = 1, c_noise = 1000 t: SD3 / diffusers' FlowMatchEulerDiscreteScheduler feed the transformer
                 timesteps = sigma * 1000, and the project's sinusoidal embedding (max_period 10^4, as DDPM's) is
                 made for timesteps of that scale: t in [0, 1] itself would reach only its lowest frequencies.
                 x_t has std <= 1 for data of std <= 1 (it moves from x0 to eps), so no input scaling.
    EDMProcess   c_in = 1 / sqrt(t^2 + sd^2), c_noise = ln(t) / 4: EDM's input scaling and noise input (x_t's std
                 is up to 80 there; without c_in the net would see inputs of that size).

Dtypes: the math runs in x_t's dtype promoted to at least float32 (float64 in, float64 out, for the tests; bf16 or
float32 in, float32 out); the net's output is cast to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.processes import EDMProcess, FlowProcess, GaussianProcess, VPProcess, per_sample, edm_preconditioning
from ddpm.errors import ConfigError

# prediction -> the process types it applies to (None: every GaussianProcess)
PREDICTION_PROCESSES: dict[str, tuple[type, ...] | None] = {
    "edm": None, "velocity": None, "eps": (VPProcess,), "x0": (VPProcess,), "v": (VPProcess,),
}
FLOW_TIME_SCALE = 1000.0  # c_noise = 1000 t on flow (SD3 / diffusers' timesteps)


def _process_name(process: GaussianProcess) -> str:
    return type(process).__name__


@dataclasses.dataclass(frozen=True)
class ContinuousDenoiser:
    """A network seen through its prediction type and preconditioning on a continuous-time process (module doc).

    Args:
        net: ``net(x (B, ...), c_noise (B,)) -> (B, ...)`` (``net(x, c_noise, cond)`` when a condition is given).
        process: the ``GaussianProcess`` (VP, EDM or flow) the net is trained on.
        prediction: ``edm``, ``velocity`` (any process) or ``eps``, ``x0``, ``v`` (VPProcess only).
        sigma_data: the data's std that ``edm`` (and EDMProcess's c_in) assume; None takes the process's
            ``sigma_data`` where it has one (EDMProcess), else 0.5 (EDM's, for data in [-1, 1]).
        clip_denoised: the samplers' x0_hat (``__call__``) clipped to [-1, 1], the pixel range (as the VP
            ``Denoiser``'s, DDPM's); ``predict``, ``velocity`` and so the losses see the unclipped prediction.
    """

    net: Any
    process: GaussianProcess
    prediction: str = "edm"
    sigma_data: float | None = None
    clip_denoised: bool = False

    def __post_init__(self):
        if not isinstance(self.process, GaussianProcess):
            raise ConfigError(f"process={self.process!r} is not allowed: use a ddpm.diffusion.processes.GaussianProcess")
        if self.prediction not in PREDICTION_PROCESSES:
            raise ConfigError(f"denoiser.prediction={self.prediction!r} is not allowed: choose one of "
                              f"{list(PREDICTION_PROCESSES)}")
        allowed = PREDICTION_PROCESSES[self.prediction]
        if allowed is not None and not isinstance(self.process, allowed):
            raise ConfigError(f"denoiser.prediction={self.prediction} applies to {', '.join(a.__name__ for a in allowed)} "
                              f"only, not to {_process_name(self.process)}: use prediction=edm or prediction=velocity")
        sd = getattr(self.process, "sigma_data", 0.5) if self.sigma_data is None else self.sigma_data
        if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not 0 < sd < math.inf:
            raise ConfigError(f"denoiser.sigma_data={sd!r} is not allowed: use a number > 0 (EDM: 0.5)")
        object.__setattr__(self, "sigma_data", float(sd))
        if not isinstance(self.clip_denoised, bool):
            raise ConfigError(f"denoiser.clip_denoised={self.clip_denoised!r} is not allowed: use true or false")

    def replace(self, **changes: Any) -> "ContinuousDenoiser":
        """A copy with some fields changed, e.g. ``denoiser.replace(net=ema_net)``."""
        return dataclasses.replace(self, **changes)

    # ---- coefficients --------------------------------------------------------------------------------------------
    @staticmethod
    def _dtype(x_t: Tensor) -> torch.dtype:
        return torch.promote_types(x_t.dtype, torch.float32)

    def _time(self, x_t: Tensor, t: Tensor) -> Tensor:
        """t as a (B,) vector in the math's dtype."""
        t = torch.as_tensor(t, device=x_t.device).to(self._dtype(x_t))
        return t.expand(x_t.shape[0]) if t.ndim == 0 else t

    def preconditioning(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(scale, c_in, c_noise), each (B,): the net gets ``c_in * x_t / scale`` and ``c_noise``.
        ``edm``: scale = alpha, (c_in, c_noise) of Table 1 at nu; otherwise scale = 1 and the per-process inputs."""
        t, p = self._time(x_t, t), self.process
        if self.prediction == "edm":
            _, _, c_in, c_noise = edm_preconditioning(p.noise_level(t), self.sigma_data)
            return p.alpha(t), c_in, c_noise
        one = torch.ones_like(t)
        if isinstance(p, FlowProcess):
            return one, one, FLOW_TIME_SCALE * t
        if isinstance(p, EDMProcess):
            return one, (t**2 + self.sigma_data**2).rsqrt(), 0.25 * torch.log(t)
        return one, one, t  # VP (and any other process): the time itself

    # ---- the network ---------------------------------------------------------------------------------------------
    def net_output(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's raw output F (B, ...) in the math's dtype, from its preconditioned inputs."""
        dtype = self._dtype(x_t)
        scale, c_in, c_noise = self.preconditioning(x_t, t)
        x_in = (per_sample(c_in / scale, x_t) * x_t.to(dtype)).to(x_t.dtype)
        out = self.net(x_in, c_noise) if cond is None else self.net(x_in, c_noise, cond)
        return out.to(dtype)

    def from_output(self, out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from a raw output ``out`` at (x_t, t); exact inverses of the targets (module doc)."""
        t, p = self._time(x_t, t), self.process
        x = x_t.to(out.dtype)
        alpha, sigma = per_sample(p.alpha(t), x), per_sample(p.sigma(t), x)
        if self.prediction == "edm":
            c_skip, c_out, _, _ = edm_preconditioning(p.noise_level(t), self.sigma_data)
            x0 = per_sample(c_skip, x) * (x / alpha) + per_sample(c_out, x) * out
            return x0, (x - alpha * x0) / sigma
        if self.prediction == "velocity":
            d_alpha, d_sigma = per_sample(p.d_alpha(t), x), per_sample(p.d_sigma(t), x)
            det = alpha * d_sigma - sigma * d_alpha
            return (d_sigma * x - sigma * out) / det, (alpha * out - d_alpha * x) / det
        if self.prediction == "eps":
            return (x - sigma * out) / alpha, out
        if self.prediction == "x0":
            return out, (x - alpha * out) / sigma
        norm = alpha**2 + sigma**2  # v: [x_t; v] = [[alpha, sigma], [-sigma, alpha]] [x0; eps]
        return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm

    # ---- what consumers call -------------------------------------------------------------------------------------
    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) at (x_t, t), each (B, ...) in the math's dtype."""
        return self.from_output(self.net_output(x_t, t, cond), x_t, t)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """x0_hat (B, ...): the denoiser the ``ode_samplers`` call (clipped to [-1, 1] with ``clip_denoised``)."""
        return self.clipped(self.predict(x_t, t, cond)[0])

    def clipped(self, x0: Tensor) -> Tensor:
        """x0 clipped to [-1, 1] when the denoiser clips, else x0."""
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    def velocity(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """u_hat = alpha' x0_hat + sigma' eps_hat (B, ...): the raw output for ``velocity``, else from the prediction."""
        out = self.net_output(x_t, t, cond)
        if self.prediction == "velocity":
            return out
        x0, eps = self.from_output(out, x_t, t)
        return self.process.velocity(x0, eps, self._time(x_t, t))
