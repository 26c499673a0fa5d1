"""Euler and Heun samplers on continuous time, written once for every ``GaussianProcess`` (VP, EDM, flow).

Each is ``sampler(denoise, process, x_T, generator=None, cond=None) -> x_0``:

    denoise(x_t, t, cond) -> x0_hat     x_t (B, ...) in the process's own variable, x_t = alpha(t) x0 + sigma(t) eps;
                                        t (B,) times of that process (EDM: the noise level; flow: in [0, 1];
                                        VP: the fractional timestep in [0, T-1]), in x_t's dtype;
                                        x0_hat (B, ...) the estimate of E[x0 | x_t].
    process                             a ``ddpm.diffusion.processes.GaussianProcess``.
    x_T (B, ...)                        standard normal noise; the sampler scales it to its first time t_0:
                                        x = sigma(t_0) x_T (below).
    generator                           draws the noise of stochastic churn (nothing else is random).

The probability-flow ODE on the path (EDM, Karras et al. 2022, Eq. 4; ``processes.velocity``) is

    dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat,    eps_hat = (x - alpha(t) x0_hat) / sigma(t),

which is EDM's dx/dt = (s'/s) x - s^2 nu' nu grad log p(x/s; nu) in its general (s(t), nu(t)) form with s = alpha,
nu = sigma / alpha. The samplers step it in the process's own time t, as EDM's Algorithm 1 does in the general form;
on EDMProcess (alpha = 1, sigma = t) they are Algorithms 1 and 2 exactly (k-diffusion's ``sample_euler`` /
``sample_heun``).

The start: x = sigma(t_0) x_T, the marginal alpha(t_0) x0 + sigma(t_0) eps without its data part. Exact for flow at
t_0 = 1 (alpha = 0); EDM's own start x = sigma_max n (Algorithm 1, line 2; alpha x0 is 1/160 of the noise at
nu = 80 for data of std 0.5); for VP at t_0 = T-1 on the linear schedule sigma = 0.99998 and alpha = 0.0064.

The end: every grid ends at the clean end, noise level nu = 0, and the last step goes there with an Euler step
in the scaled-back variable x / alpha, which lands on x0_hat (EDM's last step, x_N = x_{N-1} + (0 - t_{N-1}) d =
D(x_{N-1}; t_{N-1})). For EDM (t = 0) and flow (t = 0) it is the Euler step in t itself; for VP it is the step to
abar = 1 that the discrete samplers take (t = -1 in their notation; VP's t = 0 still has nu = sqrt(beta_0 / (1 - beta_0))).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm.diffusion.processes import EDMProcess, FlowProcess, GaussianProcess, VPProcess, karras_noise_levels
from ddpm.errors import ConfigError

DenoiseFn = Callable[..., Tensor]  # (x_t (B, ...), t (B,), cond) -> x0_hat (B, ...)

SPACINGS = ("karras", "uniform", "log_snr")

# The noise-level range of ``karras`` and ``log_snr`` spacing on flow, whose nu runs from 0 (t = 0) to inf (t = 1):
# EDM's (Karras et al. 2022, Sec. 5), i.e. t from 0.002 / 1.002 to 80 / 81.
FLOW_NOISE_RANGE = (0.002, 80.0)


class TimeGrid(NamedTuple):
    """Where a sampler steps: ``t`` (N + 1,) the process's times, decreasing, and ``nu`` (N + 1,) their noise levels
    sigma / alpha, strictly decreasing; both float64. t[0] is the start, and t[N], nu[N] = 0 the clean end."""

    t: Tensor
    nu: Tensor


def clean_time(process: GaussianProcess) -> float:
    """The time that stands for the clean end nu = 0: EDM's sigma = 0 and flow's t = 0; for VP t = -1, the discrete
    samplers' clean image (abar = 1), since VP's t = 0 is the first noisy step, nu = sqrt(beta_0 / (1 - beta_0))."""
    if isinstance(process, VPProcess):
        return -1.0
    return float(process.t_of_noise_level(torch.zeros((), dtype=torch.float64)))


def noise_range(process: GaussianProcess) -> tuple[float, float]:
    """(nu_min, nu_max): the noise levels between which ``karras`` and ``log_snr`` spacing lie by default. EDM: its
    (sigma_min, sigma_max); VP: nu(0), nu(T-1); flow: ``FLOW_NOISE_RANGE`` (its own range is 0 to inf)."""
    if isinstance(process, FlowProcess):
        return FLOW_NOISE_RANGE
    if isinstance(process, EDMProcess):
        return process.sigma_min, process.sigma_max
    ends = process.noise_level(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


def time_grid(process: GaussianProcess, steps: int, spacing: str = "karras", rho: float = 7.0,
              nu_min: float | None = None, nu_max: float | None = None) -> TimeGrid:
    """The N + 1 = ``steps`` + 1 times of an N-step sampler, from the start to the clean end (nu = 0).

    ``karras``: EDM's spacing (Karras et al. 2022, Eq. 5), nu_i = (nu_max^(1/rho) + i/(N-1) (nu_min^(1/rho) -
        nu_max^(1/rho)))^rho for i < N (``processes.karras_noise_levels``), mapped to t_i = t_of_noise_level(nu_i).
    ``log_snr``: N log-SNRs uniform from lambda(nu_max) to lambda(nu_min), i.e. nu geometric (k-diffusion's
        ``get_sigmas_exponential``; DPM-Solver's ``logSNR``), mapped to t the same way.
    ``uniform``: t uniform from the process's t_max to the clean end: N + 1 points of linspace(t_max, t_clean).
        Flow: linspace(1, 0) (rectified flow's Euler grid); VP: linspace(T-1, -1), the discrete samplers'
        ``trailing`` steps (999, 899, ..., 99 at T = 1000, N = 10); EDM: linspace(sigma_max, 0).
    Then the clean end: t_N = ``clean_time(process)``, nu_N = 0.

    ``nu_min``, ``nu_max`` (``karras``, ``log_snr``): None takes ``noise_range(process)``.
    """
    _check_steps(steps)
    _check_spacing(spacing)
    _check_rho(rho)
    t_clean = clean_time(process)
    if spacing == "uniform":
        t = torch.linspace(process.t_max, t_clean, steps + 1, dtype=torch.float64)
        nu = torch.cat([process.noise_level(t[:-1]), torch.zeros(1, dtype=torch.float64)])
        return TimeGrid(t, nu)
    default_min, default_max = noise_range(process)
    lo = default_min if nu_min is None else nu_min
    hi = default_max if nu_max is None else nu_max
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi < math.inf):
        raise ConfigError(f"sampler.nu_min={nu_min!r}, sampler.nu_max={nu_max!r} are not allowed: "
                          "use 0 < nu_min < nu_max < inf (or null for the process's range)")
    if spacing == "karras":
        nu = karras_noise_levels(steps, float(lo), float(hi), rho)  # (N + 1,), nu_N = 0
    else:  # log_snr: lambda = -2 log nu uniform, so log nu uniform
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
        nu = torch.cat([torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi))), torch.zeros(1, dtype=torch.float64)])
    t = torch.cat([process.t_of_noise_level(nu[:-1]), torch.tensor([t_clean], dtype=torch.float64)])
    if steps > 1 and not bool((t[:-1] > t[1:]).all()):
        raise ConfigError(f"sampler.nu_min={lo!r}, sampler.nu_max={hi!r} lie outside the process's noise levels "
                          f"{noise_range(process)}: its times collide there")
    return TimeGrid(t, nu)


class ContinuousSampler:
    """What the Euler and Heun samplers share: the grid, stochastic churn, the ODE derivative, the loop.

    Args:
        steps: N, the number of solver steps (EDM: 18 for CIFAR-10, 35 network evaluations with Heun).
        spacing: ``karras`` (default), ``uniform`` or ``log_snr`` (``time_grid``).
        rho: EDM's rho of ``karras`` spacing (7).
        S_churn, S_tmin, S_tmax, S_noise: EDM's stochasticity (Algorithm 2). At step i, with nu_i in
            [S_tmin, S_tmax], gamma_i = min(S_churn / N, sqrt(2) - 1) (else 0) raises the noise level to
            nu_hat = nu_i (1 + gamma_i), at t_hat = t_of_noise_level(nu_hat); S_churn = 0 is the deterministic ODE.
        nu_min, nu_max: the noise-level range of ``karras`` and ``log_snr`` spacing (None: ``noise_range(process)``).
        progress: show a progress bar over the steps.
    """

    name = "continuous"

    def __init__(self, steps: int = 18, spacing: str = "karras", rho: float = 7.0, S_churn: float = 0.0,
                 S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                 nu_min: float | None = None, nu_max: float | None = None, progress: bool = False):
        _check_steps(steps)
        _check_spacing(spacing)
        _check_rho(rho)
        if isinstance(S_churn, bool) or not isinstance(S_churn, (int, float)) or not 0 <= S_churn < math.inf:
            raise ConfigError(f"sampler.S_churn={S_churn!r} is not allowed: use a number >= 0 (0: deterministic)")
        if isinstance(S_noise, bool) or not isinstance(S_noise, (int, float)) or not 0 < S_noise < math.inf:
            raise ConfigError(f"sampler.S_noise={S_noise!r} is not allowed: use a number > 0 (EDM: 1 to 1.007)")
        if not (isinstance(S_tmin, (int, float)) and isinstance(S_tmax, (int, float)) and 0 <= S_tmin <= S_tmax):
            raise ConfigError(f"sampler.S_tmin={S_tmin!r}, sampler.S_tmax={S_tmax!r} are not allowed: "
                              "use 0 <= S_tmin <= S_tmax (noise levels; S_tmax may be inf)")
        self.steps, self.spacing, self.rho = steps, spacing, float(rho)
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = float(S_churn), float(S_tmin), float(S_tmax), float(S_noise)
        self.nu_min, self.nu_max, self.progress = nu_min, nu_max, progress

    def grid(self, process: GaussianProcess) -> TimeGrid:
        return time_grid(process, self.steps, self.spacing, self.rho, self.nu_min, self.nu_max)

    def nfe(self, steps: int | None = None) -> int:
        """Network evaluations of a ``steps``-step run (default: this sampler's)."""
        raise NotImplementedError

    def gamma(self, nu: float) -> float:
        """Algorithm 2's gamma_i at noise level nu; 0 outside [S_tmin, S_tmax] and at nu = inf (flow's t = 1,
        where x is noise alone already)."""
        if self.S_churn > 0 and math.isfinite(nu) and self.S_tmin <= nu <= self.S_tmax:
            return min(self.S_churn / self.steps, math.sqrt(2) - 1)
        return 0.0

    def churned_time(self, process: GaussianProcess, t: float, nu: float) -> float:
        """t_hat = t_of_noise_level(nu (1 + gamma_i)), the time churn raises step i to; t itself when gamma_i = 0."""
        gamma = self.gamma(nu)
        if gamma == 0:
            return t
        return float(process.t_of_noise_level(torch.tensor(nu * (1 + gamma), dtype=torch.float64)))

    def evaluation_times(self, process: GaussianProcess) -> list[float]:
        """The time of every network evaluation of a run on ``process``, in call order (``nfe()`` entries): each
        step's (churned) t_hat_i, and Heun's corrector at t_{i+1} on every step but the last."""
        grid = self.grid(process)
        ts, nus = grid.t.tolist(), grid.nu.tolist()
        return [u for i in range(self.steps)
                for u in self.step_times(self.churned_time(process, ts[i], nus[i]), ts[i + 1], nus[i + 1] == 0)]

    def step_times(self, t_hat: float, t_next: float, last: bool) -> list[float]:
        """The evaluation times of one step from t_hat to t_next (``last``: into nu = 0): one, at t_hat."""
        return [t_hat]

    @torch.no_grad()
    def __call__(self, denoise: DenoiseFn, process: GaussianProcess, x_T: Tensor, generator=None,
                 cond=None) -> Tensor:
        grid = self.grid(process)
        ts, nus = grid.t.tolist(), grid.nu.tolist()
        x = _coefficient(process.sigma, ts[0]) * x_T  # 1. x_0 = sigma(t_0) x_T   (Algorithm 1, line 2)
        steps = tqdm(range(self.steps), desc=self.name, disable=not self.progress, leave=False)
        for i in steps:
            t, nu, t_next, nu_next = ts[i], nus[i], ts[i + 1], nus[i + 1]
            # 2. churn (Algorithm 2, lines 4-6): raise the noise level of the scaled-back x / alpha from nu to
            #    nu_hat = nu (1 + gamma) by adding sqrt(nu_hat^2 - nu^2) S_noise eps, and rescale to alpha(t_hat).
            if self.gamma(nu) > 0:
                t_hat = self.churned_time(process, t, nu)
                nu_hat = _coefficient(process.noise_level, t_hat)  # VP: capped at nu(T-1), where t_hat is clamped
                eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                ve = x / _coefficient(process.alpha, t) + math.sqrt(max(nu_hat**2 - nu**2, 0.0)) * self.S_noise * eps
                x, t = _coefficient(process.alpha, t_hat) * ve, t_hat
            # 3. the ODE derivative at (x_hat, t_hat)   (Algorithm 1, line 4 / Algorithm 2, line 7)
            d, x0 = self.derivative(denoise, process, x, t, cond)
            if nu_next == 0:
                x = x0.to(x.dtype)  # 4. last step, to nu = 0: Euler, which lands on x0_hat   (Algorithm 1, line 5)
            else:
                x = self.step(denoise, process, x, t, t_next, d, cond)  # 4. Euler or Heun to t_next
        return x

    def step(self, denoise, process, x: Tensor, t: float, t_next: float, d: Tensor, cond) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def derivative(denoise: DenoiseFn, process: GaussianProcess, x: Tensor, t: float, cond):
        """(dx/dt, x0_hat) at (x, t): alpha'(t) x0_hat + sigma'(t) eps_hat, eps_hat = (x - alpha x0_hat) / sigma."""
        t_b = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)  # (B,)
        x0 = denoise(x, t_b.to(x.dtype), cond).to(x.dtype)
        eps = process.eps_of(x, x0, t_b)
        return process.velocity(x0, eps, t_b), x0


class EulerSampler(ContinuousSampler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models", Algorithm 1 without its second-order correction; with S_churn > 0,
    Algorithm 2's churn before each Euler step, k-diffusion's ``sample_euler``).

    For i = 0, ..., N-1 on the grid t_0 > ... > t_N (``time_grid``), from x = sigma(t_0) x_T:
        1. churn: gamma_i, nu_hat = nu_i (1 + gamma_i), t_hat = t(nu_hat), x_hat = alpha(t_hat) (x / alpha(t_i) +
           sqrt(nu_hat^2 - nu_i^2) S_noise eps), eps ~ N(0, I) from ``generator``   (Algorithm 2, lines 4-6)
        2. d = alpha'(t_hat) x0_hat + sigma'(t_hat) eps_hat at (x_hat, t_hat)                 (Algorithm 2, line 7)
        3. x_{i+1} = x_hat + (t_{i+1} - t_hat) d; into nu = 0 that is x0_hat                   (Algorithm 2, line 8)
    One network evaluation per step: NFE = N.
    """

    name = "euler"

    def nfe(self, steps: int | None = None) -> int:
        return _check_steps(self.steps if steps is None else steps)

    def step(self, denoise, process, x, t, t_next, d, cond):
        return x + (t_next - t) * d


class HeunSampler(ContinuousSampler):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, deterministic;
    Algorithm 2 with S_churn > 0; k-diffusion's ``sample_heun``).

    For i = 0, ..., N-1 on the grid t_0 > ... > t_N (``time_grid``), from x = sigma(t_0) x_T:
        1. churn to (x_hat, t_hat) as ``EulerSampler``                                     (Algorithm 2, lines 4-6)
        2. d_i = alpha'(t_hat) x0_hat + sigma'(t_hat) eps_hat at (x_hat, t_hat)           (Algorithm 2, line 7)
        3. x' = x_hat + (t_{i+1} - t_hat) d_i                                             (Algorithm 2, line 8)
        4. if nu_{i+1} > 0: d' the derivative at (x', t_{i+1}),
           x_{i+1} = x_hat + (t_{i+1} - t_hat) (d_i + d') / 2                           (Algorithm 2, lines 9-11)
           else (the last step, to nu = 0) x_{i+1} = x' = x0_hat: Euler, as the paper's
    Two network evaluations per step but the last: NFE = 2N - 1 (N = 18: 35, EDM's CIFAR-10 setting).
    """

    name = "heun"

    def nfe(self, steps: int | None = None) -> int:
        return 2 * _check_steps(self.steps if steps is None else steps) - 1

    def step_times(self, t_hat, t_next, last):
        return [t_hat] if last else [t_hat, t_next]  # the corrector at t_{i+1}; the last step is Euler

    def step(self, denoise, process, x, t, t_next, d, cond):
        h = t_next - t
        x_euler = x + h * d
        d_next, _ = self.derivative(denoise, process, x_euler, t_next, cond)
        return x + h * 0.5 * (d + d_next)


def _coefficient(fn, t: float) -> float:
    """A process coefficient (alpha, sigma, noise_level) at one time, in float64, as a Python number."""
    return float(fn(torch.tensor(t, dtype=torch.float64)))


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sampler.steps={steps!r} is not allowed: use an integer >= 1 (solver steps, e.g. 18)")
    return steps


def _check_spacing(spacing) -> str:
    if spacing not in SPACINGS:
        raise ConfigError(f"sampler.spacing={spacing!r} is not allowed: choose one of {', '.join(SPACINGS)}")
    return spacing


def _check_rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < math.inf:
        raise ConfigError(f"sampler.rho={rho!r} is not allowed: use a number > 0 (EDM: 7; 1 is uniform in nu)")
    return rho


__all__ = ["FLOW_NOISE_RANGE", "SPACINGS", "ContinuousSampler", "DenoiseFn", "EulerSampler", "HeunSampler",
           "TimeGrid", "clean_time", "noise_range", "time_grid"]
