"""Gaussian paths over continuous time: one interface for the VP chain, EDM and flow matching.

Every process here is a Gaussian path from the data (small t) to noise (large t)

    x_t = alpha(t) x0 + sigma(t) eps,    eps ~ N(0, I)

(Kingma et al. 2021, "Variational Diffusion Models"; Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models" (EDM), Eq. 4 and Table 1; Lipman et al. 2023, "Flow Matching").
EDM writes the same path as x_t = s(t) (x0 + nu(t) eps): the scale s = alpha and the noise level
nu = sigma / alpha, the std of the noise of the scaled-back x_t / s (EDM's sigma(t), k-diffusion's
``sigma``). What samplers and guidance need follows from (alpha, sigma) and a denoiser's x0_hat:

    log-SNR          lambda(t) = 2 log(alpha / sigma) = -2 log nu
    eps of x0        eps = (x_t - alpha x0) / sigma
    velocity         u(t) = d x_t / dt = alpha'(t) x0 + sigma'(t) eps      (flow matching's target)
    PF-ODE           dx/dt = E[u | x_t] = alpha' x0_hat + sigma' eps_hat    (EDM Eq. 4, written on the path)

The three processes, each with its own time variable:

    VPProcess(schedule)   today's discrete chain: t is the timestep in [0, T-1]; alpha = sqrt(abar_t),
                          sigma = sqrt(1 - abar_t) at integer t, log-SNR linear in t in between
    EDMProcess            alpha = 1, sigma = t: the time is the noise level, in [sigma_min, sigma_max]
    FlowProcess           alpha = 1 - t, sigma = t, t in [0, 1] (rectified flow; SD3)

Shapes: t is a tensor of any shape (usually (B,) or a scalar); coefficients have t's shape, in t's
dtype (float64 in, float64 out: the tests derive everything in float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError


class GaussianProcess:
    """x_t = alpha(t) x0 + sigma(t) eps; subclasses give ``alpha``, ``sigma``, their derivatives, and ``t_of_log_snr``."""

    t_min: float  # the least noisy time a sampler reaches
    t_max: float  # the noisiest time, where sampling starts

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """The time of a log-SNR (the inverse of ``log_snr``)."""
        raise NotImplementedError

    # ---- derived: the same for every process -----------------------------------------------------
    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = 2 log(alpha / sigma), decreasing in t."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def noise_level(self, t: Tensor) -> Tensor:
        """nu(t) = sigma / alpha: EDM's sigma, the noise std of x_t / alpha."""
        return self.sigma(t) / self.alpha(t)

    def t_of_noise_level(self, nu: Tensor) -> Tensor:
        return self.t_of_log_snr(-2.0 * torch.log(nu))

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps; x0, eps (B, ...) and t (B,)."""
        return per_sample(self.alpha(t), x0) * x0 + per_sample(self.sigma(t), x0) * eps

    def eps_of(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """eps = (x_t - alpha x0) / sigma."""
        return (x_t - per_sample(self.alpha(t), x_t) * x0) / per_sample(self.sigma(t), x_t)

    def x0_of(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x0 = (x_t - sigma eps) / alpha."""
        return (x_t - per_sample(self.sigma(t), x_t) * eps) / per_sample(self.alpha(t), x_t)

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """u = d x_t / dt = alpha'(t) x0 + sigma'(t) eps along the path of (x0, eps); with the denoiser's
        (x0_hat, eps_hat) it is the probability-flow ODE's derivative at (x_t, t)."""
        return per_sample(self.d_alpha(t), x0) * x0 + per_sample(self.d_sigma(t), x0) * eps


class EDMProcess(GaussianProcess):
    """EDM's process (Karras et al. 2022, Table 1, "EDM" column): alpha = 1, sigma(t) = t, so the time is the
    noise level, in [sigma_min, sigma_max]; ``sigma_data`` is the data's std the preconditioning assumes."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("sigma_data", sigma_data)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"process.{name}={value!r} is not allowed: use a number > 0")
        if sigma_min >= sigma_max:
            raise ConfigError(f"process.sigma_min={sigma_min} >= process.sigma_max={sigma_max}: sigma_min must be the smaller")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_of_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.exp(-0.5 * log_snr)


class FlowProcess(GaussianProcess):
    """Rectified flow / flow matching's straight path (Liu et al. 2023; Lipman et al. 2023; SD3, Esser et al.
    2024): alpha = 1 - t, sigma = t, t in [0, 1]; the velocity is eps - x0, the same at every t."""

    t_min, t_max = 0.0, 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def t_of_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * log_snr)  # nu = t / (1 - t) = exp(-lambda / 2)


class VPProcess(GaussianProcess):
    """Today's discrete variance-preserving chain as a path over t in [0, T-1] (the timestep index).

    At integer t, alpha = sqrt(abar_t) and sigma = sqrt(1 - abar_t) exactly (float64, from the schedule's
    betas), so every sample of the discrete samplers is unchanged; between integers the log-SNR is linear
    in t (DPM-Solver's discrete-time schedule, Lu et al. 2022, App. D, interpolates log alpha the same way)
    and alpha^2 + sigma^2 = 1 throughout.
    """

    def __init__(self, schedule: NoiseSchedule):
        abar = torch.tensor(schedule.alphas_cumprod_host, dtype=torch.float64)  # (T,) derived in float64
        self._log_snr = torch.log(abar) - torch.log1p(-abar)  # (T,) decreasing
        self.num_timesteps = len(abar)
        self.t_min, self.t_max = 0.0, float(self.num_timesteps - 1)

    def log_snr(self, t: Tensor) -> Tensor:
        table = self._log_snr.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        t = t.to(table.dtype).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2) if self.num_timesteps > 1 else t.floor().long()
        if self.num_timesteps == 1:
            return table[lo]
        w = t - lo.to(t.dtype)
        return table[lo] + w * (table[lo + 1] - table[lo])

    def _slope(self, t: Tensor) -> Tensor:
        """d lambda / dt on the segment holding t (at an integer, the segment that starts there)."""
        table = self._log_snr.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        lo = t.floor().long().clamp(0, self.num_timesteps - 2)
        return table[lo + 1] - table[lo]

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t)).sqrt()  # alpha^2 = SNR / (1 + SNR)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        # alpha = sigmoid(lambda)^(1/2): d alpha / d lambda = alpha sigma^2 / 2
        return 0.5 * self.alpha(t) * self.sigma(t) ** 2 * self._slope(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * self.sigma(t) * self.alpha(t) ** 2 * self._slope(t)

    def t_of_log_snr(self, log_snr: Tensor) -> Tensor:
        table = self._log_snr.to(device=log_snr.device, dtype=log_snr.dtype)
        flipped = table.flip(0)  # increasing
        i = torch.searchsorted(flipped, log_snr.contiguous()).clamp(1, self.num_timesteps - 1)
        hi_l, lo_l = flipped[i], flipped[i - 1]  # lo_l <= lambda <= hi_l
        t_hi = (self.num_timesteps - 1 - i).to(log_snr.dtype)  # the time of hi_l (the smaller t)
        frac = (hi_l - log_snr) / (hi_l - lo_l)
        return (t_hi + frac).clamp(0, self.num_timesteps - 1)


def process_name(process: GaussianProcess | None) -> str:
    """``vp``, ``edm`` or ``flow``: the ``process=`` choice a process object comes from (None: vp)."""
    if process is None or isinstance(process, VPProcess):
        return "vp"
    if isinstance(process, EDMProcess):
        return "edm"
    if isinstance(process, FlowProcess):
        return "flow"
    return type(process).__name__


# ---- EDM's preconditioning and sigma spacing (Karras et al. 2022, Table 1) -----------------------
def edm_preconditioning(nu: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM at noise level nu (Table 1, "EDM" column):
    D(x; nu) = c_skip x + c_out F(c_in x; c_noise), with x the scaled-back x_t / alpha.

        c_skip = sd^2 / (nu^2 + sd^2)    c_out = nu sd / sqrt(nu^2 + sd^2)
        c_in = 1 / sqrt(nu^2 + sd^2)     c_noise = ln(nu) / 4
    """
    total = nu**2 + sigma_data**2
    return sigma_data**2 / total, nu * sigma_data / total.sqrt(), total.rsqrt(), 0.25 * torch.log(nu)


def ve_preconditioning(nu: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Table 1, "VE" column (Song et al. 2021's NCSN++): c_skip = 1, c_out = nu, c_in = 1, c_noise = ln(nu / 2)."""
    return torch.ones_like(nu), nu, torch.ones_like(nu), torch.log(0.5 * nu)


def karras_noise_levels(steps: int, nu_min: float, nu_max: float, rho: float = 7.0) -> Tensor:
    """EDM's spacing (Eq. 5): nu_i = (nu_max^(1/rho) + i / (N - 1) (nu_min^(1/rho) - nu_max^(1/rho)))^rho for
    i < N, then nu_N = 0; (N + 1,) float64, decreasing. rho = 7 as in the paper; rho = 1 is uniform."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sampler.steps={steps!r} is not allowed: use an integer >= 1")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ConfigError(f"sampler.rho={rho!r} is not allowed: use a number > 0 (EDM: 7)")
    if not 0 < nu_min < nu_max:
        raise ConfigError(f"sigma_min={nu_min!r}, sigma_max={nu_max!r} are not allowed: use 0 < sigma_min < sigma_max")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = nu_min ** (1 / rho), nu_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def per_sample(coefficient: Tensor, like: Tensor) -> Tensor:
    """A per-sample coefficient (B,) (or a scalar) shaped to broadcast against ``like`` (B, ...)."""
    if coefficient.ndim == 0:
        return coefficient.to(like.dtype)
    return coefficient.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
