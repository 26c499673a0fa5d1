"""Samplers driven by exact (closed-form) denoisers must reproduce the data they imply."""

import pytest
import torch

from ddpm import schedules
from ddpm.errors import ConfigError
from ddpm.samplers import DDPMSampler


def point_denoiser(sched, point):
    """The exact denoiser when all data is one point: x0_hat = point, eps from inverting q_sample."""

    def model(x_t, t):
        x0 = point.expand_as(x_t)
        return x0, sched.eps_from_x0(x_t, t, x0)

    return model


def gaussian_denoiser(sched, mu, std):
    """Exact E[x0 | x_t] for data N(mu, std^2 I): mu + sqrt(abar) std^2 / (abar std^2 + 1 - abar) (x_t - sqrt(abar) mu)."""

    def model(x_t, t):
        ab = sched.alphas_cumprod[t].view(-1, *[1] * (x_t.ndim - 1)).double()
        x = x_t.double()
        x0 = mu + ab.sqrt() * std**2 / (ab * std**2 + 1 - ab) * (x - ab.sqrt() * mu)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return x0.float(), eps.float()

    return model


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_returns_the_single_data_point(variance):
    sched = schedules.linear(num_timesteps=200)
    point = torch.tensor([[0.5, -0.25], [0.9, -1.0]]).view(1, 1, 2, 2)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = DDPMSampler(variance, clip_denoised=False)(point_denoiser(sched, point), sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(out, point.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_reproduces_a_gaussian_data_distribution(variance):
    sched = schedules.linear()
    mu, std = 0.3, 0.5
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(20_000, 1, generator=g)
    out = DDPMSampler(variance, clip_denoised=False)(gaussian_denoiser(sched, mu, std), sched, x_T, g)
    assert out.mean().item() == pytest.approx(mu, abs=0.015)
    assert out.std().item() == pytest.approx(std, rel=0.03)


def test_ddpm_is_reproducible_from_a_seed():
    sched = schedules.linear(num_timesteps=50)
    model = gaussian_denoiser(sched, 0.0, 1.0)
    runs = [
        DDPMSampler()(model, sched, torch.randn(4, 3, generator=g), g)
        for g in (torch.Generator().manual_seed(7), torch.Generator().manual_seed(7))
    ]
    assert torch.equal(runs[0], runs[1])


def test_ddpm_clips_the_predicted_x0():
    sched = schedules.linear(num_timesteps=100)
    out = DDPMSampler(clip_denoised=True)(point_denoiser(sched, torch.tensor(3.0)), sched, torch.zeros(4, 1), torch.Generator())
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)  # the last step returns the mean of x0=clip(3)=1


def test_ddpm_last_step_adds_no_noise():
    sched = schedules.linear(num_timesteps=1)
    model = lambda x_t, t: (torch.full_like(x_t, 0.2), torch.zeros_like(x_t))  # noqa: E731
    out = DDPMSampler()(model, sched, torch.randn(8, 1), torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, 0.2))


def test_unknown_variance_is_named():
    with pytest.raises(ConfigError, match="variance='learned'"):
        DDPMSampler("learned")


def test_ddpm_without_noise_collapses_a_gaussian_towards_its_mean():
    sched = schedules.linear()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(5_000, 1, generator=g)
    out = DDPMSampler(clip_denoised=False, noise_scale=0.0)(gaussian_denoiser(sched, 0.3, 0.5), sched, x_T, g)
    assert out.mean().item() == pytest.approx(0.3, abs=0.02)
    assert out.std().item() < 0.5 * 0.5  # far narrower than the data's 0.5
