"""Training noise levels of the continuous-time processes (ddpm.diffusion.noise_levels): EDM's log-normal
sigma and loss weight, SD3's logit-normal and uniform flow times, SD3's time shift, each against the
distribution or formula it claims (moments within sampling error, closed forms, diffusers' shifted grid)."""

import math

import pytest
import torch

from ddpm.diffusion.noise_levels import edm_loss_weight, edm_training_sigma, logit_normal_t, shifted_time, uniform_t
from ddpm.diffusion.processes import edm_preconditioning
from ddpm.errors import ConfigError

N = 200_000


def within_standard_errors(sample: torch.Tensor, mean: float, std: float, k: float = 5.0) -> None:
    """The sample's mean and std agree with (mean, std) to k standard errors (normal approximations)."""
    n = len(sample)
    assert abs(sample.mean().item() - mean) <= k * std / math.sqrt(n), (sample.mean().item(), mean)
    assert abs(sample.std().item() - std) <= k * std / math.sqrt(2 * (n - 1)), (sample.std().item(), std)


def test_edm_sigmas_are_log_normal_with_the_papers_defaults():
    sigma = edm_training_sigma(N, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (sigma > 0).all()
    within_standard_errors(sigma.log(), -1.2, 1.2)
    other = edm_training_sigma(N, torch.Generator().manual_seed(0), p_mean=0.5, p_std=0.3, dtype=torch.float64)
    within_standard_errors(other.log(), 0.5, 0.3)


def test_the_edm_weight_is_one_over_c_out_squared():
    sigma = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    _, c_out, _, _ = edm_preconditioning(sigma, 0.5)
    torch.testing.assert_close(edm_loss_weight(sigma, 0.5) * c_out**2, torch.ones_like(sigma))


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_times_have_a_normal_logit(m, s):
    t = logit_normal_t(N, torch.Generator().manual_seed(1), m, s, dtype=torch.float64)
    assert ((t > 0) & (t < 1)).all()
    within_standard_errors(torch.log(t / (1 - t)), m, s)


def test_uniform_times_are_uniform():
    t = uniform_t(N, torch.Generator().manual_seed(2), 0.1, 0.9, dtype=torch.float64)
    assert t.min() >= 0.1 and t.max() < 0.9
    within_standard_errors(t, 0.5, 0.8 / math.sqrt(12))


def test_the_time_shift_scales_the_noise_level_and_matches_diffusers_grid():
    t = torch.linspace(0.001, 0.999, 50, dtype=torch.float64)
    shifted = shifted_time(t, 3.0)
    torch.testing.assert_close(shifted / (1 - shifted), 3.0 * t / (1 - t))  # nu' = shift nu
    assert torch.equal(shifted_time(t, 1.0), t)
    from diffusers import FlowMatchEulerDiscreteScheduler

    grid = torch.linspace(1, 1000, 1000, dtype=torch.float32).flip(0) / 1000  # diffusers' unshifted training sigmas
    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).sigmas
    torch.testing.assert_close(shifted_time(grid, 3.0), theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda: edm_training_sigma(4, p_std=0), "loss.p_std=0 is not allowed"),
    (lambda: logit_normal_t(4, s=-1.0), "loss.s=-1.0 is not allowed"),
    (lambda: uniform_t(4, t_min=0.5, t_max=0.5), "t_min=0.5, t_max=0.5 are not allowed"),
    (lambda: shifted_time(torch.zeros(2), 0), "shift=0 is not allowed"),
    (lambda: edm_loss_weight(torch.ones(2), sigma_data=-0.5), "process.sigma_data=-0.5 is not allowed"),
])
def test_bad_options_are_one_line(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
