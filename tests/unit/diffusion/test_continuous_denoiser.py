"""ddpm.diffusion.continuous_denoiser.ContinuousDenoiser, each against an independent computation: EDM's D against
Table 1 written out by hand in float64 and k-diffusion's ``layers.Denoiser``; a net that outputs the exact target
(computed by hand from known x0, eps) returns x0 and eps exactly for every prediction / process pair that applies;
the exact denoiser of Gaussian data (F = 0 under EDM's preconditioning) against the Gaussian posterior mean; the
net's inputs per process; the Euler sampler through the denoiser; bad input in one line."""

import math

import pytest
import torch
from support.oracles import GaussianMixturePosteriorMean
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.ode_samplers import EulerSampler
from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess
from ddpm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

D, B = 3, 6
PROCESSES = {  # (process, times inside its range, float64 (B,))
    "vp": (lambda: VPProcess(schedules.linear(num_timesteps=100)),
           torch.tensor([0.0, 0.5, 7.25, 40.0, 80.5, 99.0], dtype=torch.float64)),
    "edm": (EDMProcess, torch.tensor([0.002, 0.05, 0.5, 2.0, 20.0, 80.0], dtype=torch.float64)),
    "flow": (FlowProcess, torch.tensor([0.0, 0.01, 0.3, 0.5, 0.8, 0.99], dtype=torch.float64)),
}
APPLIES = {"vp": ("edm", "velocity", "eps", "x0", "v"), "edm": ("edm", "velocity"), "flow": ("edm", "velocity")}
PAIRS = [(p, q) for p, qs in APPLIES.items() for q in qs]


def mlp(seed: int, dtype=torch.float64) -> nn.Module:
    """A fixed nonlinear F(x (B, D), c_noise (B,)) -> (B, D) with random weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(D + 1, 32), nn.SiLU(), nn.Linear(32, D)).to(dtype)
    return lambda x, c, cond=None: net(torch.cat([x, c.to(x.dtype).view(-1, 1)], dim=1))


def draws(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(B, D, generator=g, dtype=torch.float64),
            torch.randn(B, D, generator=g, dtype=torch.float64))


def path(name):
    """(process, t, alpha, sigma, d_alpha, d_sigma) with the coefficients written out by hand (each (B, 1))."""
    make, t = PROCESSES[name]
    process = make()
    if name == "edm":
        a, s, da, ds = torch.ones_like(t), t, torch.zeros_like(t), torch.ones_like(t)
    elif name == "flow":
        a, s, da, ds = 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    else:  # VP: log-SNR piecewise linear between the schedule's integer timesteps, alpha^2 = sigmoid(lambda)
        abar = torch.cumprod(1 - schedules.linear_betas(100, 1e-4, 0.02), 0)
        lam = (abar / (1 - abar)).log()
        lo = t.floor().long().clamp(max=98)
        slope = lam[lo + 1] - lam[lo]
        lt = lam[lo] + (t - lo) * slope
        a, s = torch.sigmoid(lt).sqrt(), torch.sigmoid(-lt).sqrt()
        da, ds = 0.5 * a * s**2 * slope, -0.5 * s * a**2 * slope
    return process, t, *(c.view(-1, 1) for c in (a, s, da, ds))


def table_1(x, nu, sd=0.5):
    """EDM's (c_skip, c_out, c_in, c_noise), Karras et al. 2022 Table 1, each (B, 1), in float64 from math."""
    nu = nu.view(-1, 1)
    c_skip = sd**2 / (nu**2 + sd**2)
    c_out = nu * sd / torch.sqrt(nu**2 + sd**2)
    c_in = 1 / torch.sqrt(nu**2 + sd**2)
    return c_skip, c_out, c_in, torch.log(nu).view(-1) / 4


# ---- EDM's D: Table 1 by hand, and k-diffusion's Denoiser -----------------------------------------------------------
@pytest.mark.parametrize("name", ["edm", "flow", "vp"])
def test_edm_prediction_is_table_1_on_the_scaled_back_input(name):
    process, t, a, s, _, _ = path(name)
    t, a, s = t[1:], a[1:], s[1:]  # flow's t = 0 has nu = 0 (c_noise = -inf)
    F = mlp(1)
    x0, eps = draws()
    x_t = a * x0[1:] + s * eps[1:]
    x = x_t / a
    c_skip, c_out, c_in, c_noise = table_1(x, s.view(-1) / a.view(-1))
    want = c_skip * x + c_out * F(c_in * x, c_noise)
    got = ContinuousDenoiser(F, process, "edm", sigma_data=0.5)(x_t, t)
    assert (got - want).abs().max().item() < 1e-12


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_edm_prediction_is_k_diffusions_denoiser(name):
    from k_diffusion.layers import Denoiser as KDenoiser

    process, t, a, s, _, _ = path(name)
    t, a, s = t[1:], a[1:], s[1:]
    F = mlp(2)
    inner = lambda x, sigma: F(x, torch.log(sigma) / 4)  # noqa: E731  k-diffusion hands sigma to the inner model
    x0, eps = draws(1)
    x_t = a * x0[1:] + s * eps[1:]
    want = KDenoiser(inner, sigma_data=0.5)(x_t / a, s.view(-1) / a.view(-1))  # D on x_t / alpha at nu
    got = ContinuousDenoiser(F, process, "edm")(x_t, t)
    assert (got - want).abs().max().item() < 1e-12


# ---- the exact target returns x0 and eps exactly -------------------------------------------------------------------
def hand_target(prediction, x0, eps, x_t, a, s, da, ds, nu, sd=0.5):
    if prediction == "edm":
        c_skip, c_out, _, _ = table_1(x_t, nu, sd)
        return (x0 - c_skip * (x_t / a)) / c_out  # k-diffusion's F target
    if prediction == "velocity":
        return da * x0 + ds * eps
    return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]


@pytest.mark.parametrize("name,prediction", PAIRS)
def test_the_exact_target_returns_x0_and_eps(name, prediction):
    process, t, a, s, da, ds = path(name)
    if prediction == "edm" and name == "flow":
        t, a, s, da, ds = t[1:], a[1:], s[1:], da[1:], ds[1:]  # nu = 0 at flow's t = 0
    x0, eps = (z[: len(t)] for z in draws(2))
    x_t = a * x0 + s * eps
    target = hand_target(prediction, x0, eps, x_t, a, s, da, ds, (s / a).view(-1))
    denoiser = ContinuousDenoiser(lambda x, c, cond=None: target, process, prediction)
    x0_hat, eps_hat = denoiser.predict(x_t, t)
    assert (x0_hat - x0).abs().max().item() < 1e-10
    assert (eps_hat - eps).abs().max().item() < 1e-10
    assert (denoiser(x_t, t) - x0).abs().max().item() < 1e-10
    u_hat = denoiser.velocity(x_t, t)
    assert (u_hat - (da * x0 + ds * eps)).abs().max().item() < 1e-10


def test_velocity_on_flow_is_x_t_minus_t_u():
    process, t, *_ = path("flow")
    x0, eps = draws(3)
    tt = t.view(-1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    u = eps - x0  # the straight path's velocity
    denoiser = ContinuousDenoiser(lambda x, c, cond=None: u, process, "velocity")
    x0_hat, eps_hat = denoiser.predict(x_t, t)
    assert (x0_hat - (x_t - tt * u)).abs().max().item() < 1e-14
    assert (x0_hat - x0).abs().max().item() < 1e-14 and (eps_hat - eps).abs().max().item() < 1e-14


@pytest.mark.parametrize("name", ["vp", "edm", "flow"])
def test_gaussian_data_needs_f_zero_under_edm_preconditioning(name):
    """For x0 ~ N(0, sd^2 I), E[x0 | x] = sd^2 / (sd^2 + nu^2) x = c_skip x: the exact F is 0 on every process."""
    process, t, a, s, _, _ = path(name)
    t, a, s = t[1:], a[1:], s[1:]
    x_t = torch.randn(len(t), D, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    oracle = GaussianMixturePosteriorMean(process, [1.0], [[0.0] * D], [0.5])
    got = ContinuousDenoiser(lambda x, c, cond=None: torch.zeros_like(x), process, "edm", sigma_data=0.5)(x_t, t)
    assert (got - oracle(x_t, t)).abs().max().item() < 1e-12


# ---- what the network sees -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,prediction", PAIRS)
def test_the_net_gets_the_documented_inputs(name, prediction):
    process, t, a, s, _, _ = path(name)
    t, a, s = t[1:], a[1:], s[1:]
    x_t = torch.randn(len(t), D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    seen = []
    net = lambda x, c, cond=None: seen.append((x, c, cond)) or torch.zeros_like(x)  # noqa: E731
    ContinuousDenoiser(net, process, prediction).predict(x_t, t, cond="label")
    x_in, c_noise, cond = seen[0]
    if prediction == "edm":
        _, _, c_in, want_c = table_1(x_t, (s / a).view(-1))
        want_x = c_in * x_t / a
    elif name == "edm":
        want_x, want_c = x_t / torch.sqrt(t**2 + 0.25).view(-1, 1), torch.log(t) / 4
    else:
        want_x, want_c = x_t, (1000 * t if name == "flow" else t)
    assert cond == "label" and c_noise.shape == (len(t),) and c_noise.dtype == torch.float64
    assert (x_in - want_x).abs().max().item() < 1e-12 and (c_noise - want_c).abs().max().item() < 1e-12


def test_float32_in_float32_out_and_a_scalar_time():
    process = FlowProcess()
    F = mlp(6, torch.float32)
    x_t = torch.randn(B, D, generator=torch.Generator().manual_seed(6))
    denoiser = ContinuousDenoiser(F, process, "velocity")
    out = denoiser(x_t, torch.tensor(0.5))
    assert out.dtype == torch.float32 and out.shape == (B, D)
    assert torch.equal(out, denoiser(x_t, torch.full((B,), 0.5)))


def test_the_euler_sampler_through_an_exact_velocity_net_is_the_exact_denoisers():
    """A velocity net that returns E[u | x_t] of a Gaussian mixture (from the exact x0_hat) samples as the exact
    x0_hat does through ``EulerSampler`` on flow."""
    process = FlowProcess()
    oracle = GaussianMixturePosteriorMean(process, [0.3, 0.7], [[-1.0, 0.5, 0.0], [1.0, 0.0, -0.5]], [0.2, 0.4])

    def exact_velocity(x, c_noise, cond=None):
        t = c_noise / 1000
        x0, t = oracle(x, t), t.view(-1, 1)
        return (x - (1 - t) * x0) / t - x0  # eps_hat - x0_hat

    x_T = torch.randn(64, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sampler = EulerSampler(steps=20, spacing="uniform")
    got = sampler(ContinuousDenoiser(exact_velocity, process, "velocity"), process, x_T)
    want = sampler(oracle, process, x_T)
    assert (got - want).abs().max().item() < 1e-10


# ---- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(process="edm", prediction="score"), "denoiser.prediction='score' is not allowed"),
    (dict(process="edm", prediction="eps"), "prediction=eps applies to VPProcess only, not to EDMProcess"),
    (dict(process="flow", prediction="x0"), "prediction=x0 applies to VPProcess only, not to FlowProcess"),
    (dict(process="flow", prediction="v"), "prediction=v applies to VPProcess only"),
    (dict(process="flow", prediction="edm", sigma_data=0), "denoiser.sigma_data=0 is not allowed"),
    (dict(process="vp", prediction="edm", sigma_data=-0.5), "denoiser.sigma_data=-0.5 is not allowed"),
    (dict(process="vp", prediction="edm", sigma_data=True), "denoiser.sigma_data=True is not allowed"),
    (dict(process="flow", prediction="velocity", sigma_data=math.inf), "denoiser.sigma_data=inf is not allowed"),
    (dict(process=None, prediction="edm"), "process=None is not allowed"),
])
def test_bad_options_are_one_line(kwargs, match):
    name = kwargs.pop("process")
    process = PROCESSES[name][0]() if name else None
    with pytest.raises(ConfigError, match=match) as info:
        ContinuousDenoiser(mlp(0), process, **kwargs)
    assert "\n" not in str(info.value)
