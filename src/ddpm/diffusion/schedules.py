"""Beta schedules and the closed-form Gaussian diffusion they define.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"):
    beta_t          noise added at step t                       ``betas``
    alpha_t         1 - beta_t                                  ``alphas``
    abar_t          prod_{s<=t} alpha_s                         ``alphas_cumprod``
    q(x_t | x_0)    = N(sqrt(abar_t) x_0, (1 - abar_t) I)       ``q_sample``
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                 ``posterior``
    SNR(t)          abar_t / (1 - abar_t)                       ``snr``

Timesteps are 0-based: t = 0 is the first noising step, t = T - 1 the last.
Every derived quantity is computed once in float64 and stored as a float32 buffer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddpm.errors import ConfigError


class ScheduleError(ConfigError):
    """A schedule parameter outside its allowed range."""


def _check_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps <= 0:
        raise ScheduleError(f"num_timesteps={num_timesteps!r} is not allowed: use a positive integer such as 1000")


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value < 1.0:
            raise ScheduleError(f"{name}={value!r} is not allowed: betas must lie in the open interval (0, 1)")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Linear schedule of DDPM (Ho et al. 2020, Sec. 4): beta_t from beta_start to beta_end."""
    _check_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def quadratic_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Quadratic schedule: beta_t = (linspace(sqrt(beta_start), sqrt(beta_end)))^2.

    With beta_start=0.00085, beta_end=0.012 this is Stable Diffusion's ``scaled_linear``.
    """
    _check_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def sigmoid_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Sigmoid schedule of GeoDiff (Xu et al. 2022): beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6))."""
    _check_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    ramp = torch.sigmoid(torch.linspace(-6.0, 6.0, num_timesteps, dtype=torch.float64))
    return beta_start + (beta_end - beta_start) * ramp


def cosine_alphas_cumprod(t: Tensor, s: float) -> Tensor:
    """abar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t + s) / (1 + s)) for t in [0, 1] (Nichol & Dhariwal 2021, Eq. 17)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021): beta_t = min(1 - abar(t+1)/abar(t), max_beta)."""
    _check_timesteps(num_timesteps)
    if s < 0:
        raise ScheduleError(f"s={s!r} is not allowed: the cosine offset must be >= 0")
    if not 0.0 < max_beta < 1.0:
        raise ScheduleError(f"max_beta={max_beta!r} is not allowed: it must lie in (0, 1)")
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = cosine_alphas_cumprod(grid, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


FIXED_VARIANCES = ("fixed_small", "fixed_large")
LEARNED_VARIANCE = "learned_range"  # the network's extra C channels interpolate log beta~_t and log beta_t
REVERSE_VARIANCES = (*FIXED_VARIANCES, LEARNED_VARIANCE)


def extract(buffer: Tensor, t: Tensor, ndim: int) -> Tensor:
    """Gather ``buffer[t]`` for a batch of timesteps and shape it to broadcast over a (B, ...) tensor."""
    return buffer[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """The forward process of a DDPM and its posterior, from a vector of betas.

    Args:
        betas: (T,) noise variances, each in (0, 1). Cast to float64 before any derivation.
    """

    def __init__(self, betas: Tensor):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ScheduleError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        bad = ((betas <= 0) | (betas >= 1)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ScheduleError(f"beta[{i}]={betas[i].item():.6g} is not allowed: betas must lie in (0, 1)")

        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)   (DDPM Eq. 7); beta~_0 = 0.
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log beta~ with beta~_0 replaced by beta~_1, as log(0) is -inf (improved-diffusion).
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if len(betas) > 1 else betas
        derived = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": abar.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": clipped.log(),
            # mu~_t = coef1 x_0 + coef2 x_t   (DDPM Eq. 7)
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "snr": abar / (1.0 - abar),
        }
        for name, value in derived.items():
            self.register_buffer(name, value.to(torch.float32))
        # log sigma_t^2 of the two fixed-variance reverse steps p(x_{t-1} | x_t), also from float64.
        # Not persistent: derived from the betas, so checkpoints written before they existed still load.
        #   fixed_small: beta~_t (beta~_0 replaced by beta~_1, as log 0 = -inf)
        #   fixed_large: beta_t  (beta_0 replaced by beta~_1, so the decoder stays small; improved-diffusion)
        large = torch.cat([posterior_variance[1:2], betas[1:]]) if len(betas) > 1 else betas
        #   learned_range: between log beta~_t (clipped as above) and log beta_t, unclipped (improved-diffusion)
        reverse = {"fixed_small": clipped.log(), "fixed_large": large.log(), "learned_max": betas.log()}
        for name, value in reverse.items():
            self.register_buffer(f"reverse_log_variance_{name}", value.to(torch.float32), persistent=False)
        # abar_t as float64 host numbers, for samplers that step between timesteps on the host.
        self.alphas_cumprod_host: list[float] = abar.tolist()

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def abar(self, t: int) -> float:
        """abar_t in float64 on the host, with abar_{-1} = 1 (the clean image) for t < 0."""
        return 1.0 if t < 0 else self.alphas_cumprod_host[t]

    def reverse_log_variance(self, variance: str, t: Tensor, ndim: int) -> Tensor:
        """log sigma_t^2 of a fixed-variance reverse step, ``fixed_small`` or ``fixed_large``, shaped to broadcast."""
        if variance not in FIXED_VARIANCES:
            raise ConfigError(f"variance={variance!r} is not allowed here: choose one of {list(FIXED_VARIANCES)} "
                              f"({LEARNED_VARIANCE} comes from the network's output: Denoiser.log_variance)")
        return extract(getattr(self, f"reverse_log_variance_{variance}"), t, ndim)

    def learned_log_variance(self, v: Tensor, t: Tensor) -> Tensor:
        """log Sigma_theta = (v+1)/2 log beta_t + (1-v)/2 log beta~_t, (B, ...) like v   (Nichol & Dhariwal 2021, Eq. 15).

        The paper writes exp(w log beta_t + (1 - w) log beta~_t) with w the network output; like
        improved-diffusion (``learned_range``) the output v is mapped w = (v + 1) / 2, so v = -1 gives
        beta~_t (``fixed_small``, clipped at t = 0) and v = 1 gives beta_t. v is not constrained (nor in
        the paper): values outside [-1, 1] extrapolate. v (B, ...), t (B,).
        """
        frac = (v + 1) / 2
        hi, lo = self._coef("reverse_log_variance_learned_max", t, v), self._coef("reverse_log_variance_fixed_small", t, v)
        return frac * hi + (1 - frac) * lo

    def variance_fraction(self, log_variance: Tensor, t: Tensor) -> Tensor:
        """w in log sigma_t^2 = w log beta_t + (1 - w) log beta~_t: where a reverse variance lies between the two.

        The inverse of ``learned_log_variance`` (w = (v + 1) / 2): 0 for ``fixed_small``, 1 for ``fixed_large``
        at t >= 1 (at t = 0 ``fixed_large`` is beta~_1: 0). Respaced sampling carries w over to the
        respaced step. log_variance (B, ...) broadcastable, t (B,); w is 0 where beta_t = beta~_t in float32.
        """
        hi = self._coef("reverse_log_variance_learned_max", t, log_variance)
        lo = self._coef("reverse_log_variance_fixed_small", t, log_variance)
        gap = hi - lo
        return torch.where(gap != 0, (log_variance - lo) / torch.where(gap != 0, gap, 1.0), 0.0)

    def _coef(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        return extract(getattr(self, name), t, x.ndim)

    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """t ~ Uniform{0, ..., T-1}, shape (B,)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (DDPM Eq. 4), in float32."""
        x0, noise = x0.float(), noise.float()
        return self._coef("sqrt_alphas_cumprod", t, x0) * x0 + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)   (DDPM Eqs. 6-7)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._coef("posterior_variance", t, x_t), self._coef("posterior_log_variance_clipped", t, x_t)

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t)

    def v_target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022, Sec. 4)."""
        return self._coef("sqrt_alphas_cumprod", t, x0) * eps - self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return self._coef("sqrt_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
        return self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t + self._coef("sqrt_alphas_cumprod", t, x_t) * v


def respace(schedule: NoiseSchedule, timesteps: list[int]) -> NoiseSchedule:
    """The diffusion on the kept ``timesteps`` only: abar at each kept t is the original's, and
    beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}} (abar_{t_{-1}} = 1), in float64 (Nichol & Dhariwal 2021,
    Sec. 4; improved-diffusion's ``respace.py``). Index k of the result is the k-th smallest kept t.
    ``timesteps`` in any order, distinct, within [0, T).
    """
    kept = sorted(timesteps)
    if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= schedule.num_timesteps:
        raise ScheduleError(f"respaced timesteps must be distinct integers in [0, {schedule.num_timesteps})")
    abar = torch.tensor([schedule.abar(t) for t in kept], dtype=torch.float64)  # (K,) the host's float64 abar
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return NoiseSchedule(1.0 - abar / abar_prev)


def linear(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """The DDPM linear schedule (beta 1e-4 to 0.02 over T=1000)."""
    return NoiseSchedule(linear_betas(num_timesteps, beta_start, beta_end))


def scaled_linear(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> NoiseSchedule:
    """Latent Diffusion's ``scaled_linear`` schedule: linear in sqrt(beta)."""
    return NoiseSchedule(quadratic_betas(num_timesteps, beta_start, beta_end))


def quadratic(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Quadratic schedule over the DDPM beta range (the DDIM paper's quadratic alternative)."""
    return NoiseSchedule(quadratic_betas(num_timesteps, beta_start, beta_end))


def sigmoid(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Sigmoid schedule over the DDPM beta range."""
    return NoiseSchedule(sigmoid_betas(num_timesteps, beta_start, beta_end))


def cosine(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Cosine schedule of Improved DDPM."""
    return NoiseSchedule(cosine_betas(num_timesteps, s, max_beta))
