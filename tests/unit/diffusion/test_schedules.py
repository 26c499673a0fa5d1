"""Beta schedules and their derived buffers, against float64 closed forms."""

import math

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.diffusion.schedules import NoiseSchedule, ScheduleError


def test_linear_betas_are_evenly_spaced_between_the_ends():
    betas = schedules.linear_betas(1000, 1e-4, 0.02)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_ddpm_linear_alpha_bar_at_last_step_is_about_4e_minus_5():
    # prod_{t=1}^{1000} (1 - beta_t) with the DDPM linear schedule, computed independently.
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    abar = schedules.linear().alphas_cumprod
    assert expected == pytest.approx(4.04e-5, rel=0.01)
    assert abar[-1].item() == pytest.approx(expected, rel=1e-4)


def test_cosine_alpha_bar_matches_its_formula():
    s, T = 0.008, 1000
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = schedules.cosine(T, s).alphas_cumprod.double()
    for t in (0, 10, 250, 500, 900):  # far from the end, where the 0.999 clip does not bind
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-5)


def test_cosine_betas_are_clipped_at_max_beta():
    betas = schedules.cosine_betas(1000, 0.008, 0.999)
    assert betas.max().item() == pytest.approx(0.999)
    assert (betas > 0).all()


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = schedules.quadratic_betas(100, 0.00085, 0.012)
    assert torch.allclose(betas.sqrt().diff(), torch.full((99,), (0.012**0.5 - 0.00085**0.5) / 99, dtype=torch.float64))


def test_sigmoid_betas_rise_monotonically_between_the_bounds():
    betas = schedules.sigmoid_betas(1000, 1e-4, 0.02)
    assert (betas.diff() > 0).all()
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    for i in (0, 500, 999):
        z = -6 + 12 * i / 999
        assert betas[i].item() == pytest.approx(1e-4 + (0.02 - 1e-4) * sig(z), rel=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear", "quadratic", "sigmoid"])
def test_every_schedule_stores_float32_buffers_derived_in_float64(name):
    sched = getattr(schedules, name)(num_timesteps=200)
    betas = sched.betas.double()
    abar = torch.cumprod(1 - sched.betas.double(), 0)  # independent float64 recomputation
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert all(b.dtype == torch.float32 for b in sched.buffers())
    assert torch.allclose(sched.alphas_cumprod.double(), abar, rtol=1e-5)
    assert torch.allclose(sched.alphas_cumprod_prev.double(), abar_prev, rtol=1e-5)
    assert torch.allclose(sched.posterior_variance.double(), betas * (1 - abar_prev) / (1 - abar), rtol=1e-4, atol=1e-12)
    assert torch.allclose(sched.snr.double(), abar / (1 - abar), rtol=1e-4)
    assert torch.allclose(sched.sqrt_recipm1_alphas_cumprod.double(), (1 / abar - 1).sqrt(), rtol=1e-4)
    assert torch.isfinite(sched.posterior_log_variance_clipped).all()


def test_posterior_log_variance_replaces_the_zero_at_t0_by_t1():
    sched = schedules.linear()
    assert sched.posterior_variance[0].item() == 0.0
    assert sched.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(sched.posterior_variance[1].item()), rel=1e-5)


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_timesteps=0), "num_timesteps=0"),
    (dict(num_timesteps=-5), "num_timesteps=-5"),
    (dict(beta_start=0.0), "beta_start=0.0"),
    (dict(beta_end=1.5), "beta_end=1.5"),
])
def test_bad_linear_parameters_name_the_value(kwargs, named):
    with pytest.raises(ScheduleError, match=named):
        schedules.linear(**kwargs)


def test_betas_outside_open_unit_interval_are_rejected_with_their_index():
    with pytest.raises(ConfigError, match=r"beta\[2\]=1 "):
        NoiseSchedule(torch.tensor([0.1, 0.2, 1.0]))
