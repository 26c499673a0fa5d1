"""The Gaussian paths of ddpm.diffusion.processes (VP, EDM, flow): their coefficients against float64 closed
forms, the velocity against a finite difference of the path, the probability-flow ODE against EDM's Eq. 4
on Gaussian data, EDM's preconditioning and sigma spacing against the formulas (and k-diffusion's)."""

import math

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.processes import (EDMProcess, FlowProcess, VPProcess, edm_preconditioning, karras_noise_levels,
                                      ve_preconditioning)
from ddpm.errors import ConfigError

T = 50


def vp():
    return VPProcess(schedules.linear(num_timesteps=T))


def abar64() -> torch.Tensor:
    """abar_t of the linear schedule, from its betas in float64 (Ho et al. 2020)."""
    return torch.cumprod(1 - schedules.linear_betas(T, 1e-4, 0.02), 0)


PROCESSES = {  # (process, times inside its range, float64)
    "vp": (vp, torch.tensor([0.0, 0.25, 7.0, 7.5, 30.9, 49.0], dtype=torch.float64)),
    "edm": (EDMProcess, torch.tensor([0.002, 0.1, 1.0, 12.0, 80.0], dtype=torch.float64)),
    "flow": (FlowProcess, torch.tensor([0.01, 0.2, 0.5, 0.75, 0.99], dtype=torch.float64)),
}


def test_the_vp_path_is_the_discrete_chain_at_every_timestep():
    process, t = vp(), torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(process.alpha(t), abar64().sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(process.sigma(t), (1 - abar64()).sqrt(), rtol=1e-12, atol=0)
    half = torch.tensor([3.5, 20.25], dtype=torch.float64)  # between timesteps: log-SNR linear in t
    lam = (abar64() / (1 - abar64())).log()
    want = torch.stack([(lam[3] + lam[4]) / 2, lam[20] + 0.25 * (lam[21] - lam[20])])
    torch.testing.assert_close(process.log_snr(half), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(process.alpha(half) ** 2 + process.sigma(half) ** 2, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("process, alpha, sigma", [
    (EDMProcess(), lambda t: torch.ones_like(t), lambda t: t),
    (FlowProcess(), lambda t: 1 - t, lambda t: t),
], ids=["edm", "flow"])
def test_edm_and_flow_have_their_closed_form_coefficients(process, alpha, sigma):
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    torch.testing.assert_close(process.alpha(t), alpha(t))
    torch.testing.assert_close(process.sigma(t), sigma(t))
    torch.testing.assert_close(process.log_snr(t), 2 * torch.log(alpha(t) / sigma(t)))
    torch.testing.assert_close(process.noise_level(t), sigma(t) / alpha(t))


@pytest.mark.parametrize("name", PROCESSES)
def test_time_of_a_log_snr_inverts_the_log_snr(name):
    make, t = PROCESSES[name]
    process = make()
    torch.testing.assert_close(process.t_of_log_snr(process.log_snr(t)), t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(process.t_of_noise_level(process.noise_level(t)), t, rtol=1e-9, atol=1e-9)
    assert (process.log_snr(t).diff() < 0).all()  # noisier with time


@pytest.mark.parametrize("name", PROCESSES)
def test_the_velocity_is_the_time_derivative_of_the_path(name):
    make, t = PROCESSES[name]
    process = make()
    t = t[(t > process.t_min + 1e-3) & (t < process.t_max - 1e-3) & (t != t.round())]  # inside a VP segment
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(len(t), 3, generator=g, dtype=torch.float64), torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    h = 1e-6
    numeric = (process.add_noise(x0, eps, t + h) - process.add_noise(x0, eps, t - h)) / (2 * h)  # central difference
    torch.testing.assert_close(process.velocity(x0, eps, t), numeric, rtol=1e-6, atol=1e-6)


def test_the_flow_velocity_is_eps_minus_x0_at_every_time():
    g = torch.Generator().manual_seed(1)
    x0, eps, t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g), torch.rand(4, generator=g)
    assert torch.equal(FlowProcess().velocity(x0, eps, t), eps - x0)


@pytest.mark.parametrize("name", PROCESSES)
def test_the_probability_flow_ode_on_the_path_is_edm_equation_4(name):
    """Data N(mu, s^2): the exact denoiser x0_hat = E[x0 | x_t] gives alpha' x0_hat + sigma' eps_hat, which must
    equal EDM's Eq. 4, dx/dt = (s'/s) x - s nu' nu grad log p(x/s; nu), with s = alpha, nu = sigma / alpha and the
    score of N(mu, s^2 + nu^2), all in float64."""
    make, t = PROCESSES[name]
    process = make()
    t = t[(t > process.t_min) & (t < process.t_max) & (t != t.round())]
    mu, s2 = 0.3, 0.25
    x = torch.linspace(-2, 2, len(t), dtype=torch.float64)
    a, sig, da, dsig = process.alpha(t), process.sigma(t), process.d_alpha(t), process.d_sigma(t)
    x0_hat = mu + a * s2 / (a**2 * s2 + sig**2) * (x - a * mu)  # Gaussian conditioning
    ode = process.velocity(x0_hat, process.eps_of(x, x0_hat, t), t)
    nu, dnu = sig / a, (dsig * a - sig * da) / a**2
    score = -(x / a - mu) / (s2 + nu**2)  # of the scaled-back variable x / s
    torch.testing.assert_close(ode, da / a * x - a * dnu * nu * score, rtol=1e-9, atol=1e-9)


def test_edm_preconditioning_is_table_1_and_gives_unit_variance_inputs_and_targets():
    nu, sd = torch.tensor([0.002, 0.2, 0.5, 3.0, 80.0], dtype=torch.float64), 0.5
    c_skip, c_out, c_in, c_noise = edm_preconditioning(nu, sd)
    torch.testing.assert_close(c_noise, torch.log(nu) / 4)
    # Karras et al. 2022, App. B.6: Var[c_in x] = 1 for x = x0 + nu n, and the target (x0 - c_skip x) / c_out too
    torch.testing.assert_close(c_in**2 * (sd**2 + nu**2), torch.ones_like(nu))
    torch.testing.assert_close(((1 - c_skip) ** 2 * sd**2 + c_skip**2 * nu**2) / c_out**2, torch.ones_like(nu))
    from k_diffusion.layers import Denoiser  # the reference implementation (a test-only dependency)

    for ours, theirs in zip((c_skip, c_out, c_in), Denoiser(None, sigma_data=sd).get_scalings(nu), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    c_skip, c_out, c_in, c_noise = ve_preconditioning(nu)
    assert torch.equal(c_skip, torch.ones_like(nu)) and torch.equal(c_out, nu) and torch.equal(c_in, torch.ones_like(nu))
    torch.testing.assert_close(c_noise, torch.log(nu / 2))


@pytest.mark.parametrize("steps, rho", [(18, 7.0), (5, 3.0), (2, 1.0)])
def test_karras_spacing_is_equation_5_and_k_diffusions(steps, rho):
    nu = karras_noise_levels(steps, 0.002, 80.0, rho)
    i = torch.arange(steps, dtype=torch.float64)
    want = (80.0 ** (1 / rho) + i / (steps - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(nu, torch.cat([want, torch.zeros(1, dtype=torch.float64)]), rtol=1e-12, atol=0)
    assert nu[0] == pytest.approx(80.0) and nu[steps - 1] == pytest.approx(0.002)
    from k_diffusion.sampling import get_sigmas_karras

    torch.testing.assert_close(nu.float(), get_sigmas_karras(steps, 0.002, 80.0, rho), rtol=1e-5, atol=1e-5)  # theirs: float32


@pytest.mark.parametrize("make, message", [
    (lambda: EDMProcess(sigma_min=1.0, sigma_max=0.5), "process.sigma_min=1.0 >= process.sigma_max=0.5"),
    (lambda: EDMProcess(sigma_data=0), "process.sigma_data=0 is not allowed"),
    (lambda: karras_noise_levels(10, 0.002, 80.0, rho=0), "sampler.rho=0 is not allowed"),
    (lambda: karras_noise_levels(0, 0.002, 80.0), "sampler.steps=0 is not allowed"),
])
def test_bad_process_options_are_one_line(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_log_snr_of_every_process_reaches_both_ends():
    assert math.isinf(FlowProcess().log_snr(torch.tensor(1.0)).item())  # pure noise at t = 1
    assert EDMProcess().log_snr(torch.tensor(80.0)).item() == pytest.approx(-2 * math.log(80.0))
    assert vp().log_snr(torch.tensor(49.0)).item() == pytest.approx(math.log(abar64()[-1] / (1 - abar64()[-1])))
