"""Samplers driven by exact (closed-form) denoisers must reproduce the data they imply."""

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.samplers import DDPMSampler
from support.oracles import gaussian_denoiser, point_denoiser


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_returns_the_single_data_point(variance):
    sched = schedules.linear(num_timesteps=200)
    point = torch.tensor([[0.5, -0.25], [0.9, -1.0]]).view(1, 1, 2, 2)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = DDPMSampler()(point_denoiser(sched, point, variance=variance, clip_denoised=False), sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(out, point.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_reproduces_a_gaussian_data_distribution(variance):
    sched = schedules.linear()
    mu, std = 0.3, 0.5
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(20_000, 1, generator=g)
    out = DDPMSampler()(gaussian_denoiser(sched, mu, std, variance=variance, clip_denoised=False), sched, x_T, g)
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
    out = DDPMSampler()(point_denoiser(sched, 3.0, clip_denoised=True), sched, torch.zeros(4, 1), torch.Generator())
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)  # the last step returns the mean of x0=clip(3)=1


def test_ddpm_last_step_adds_no_noise():
    sched = schedules.linear(num_timesteps=1)
    out = DDPMSampler()(point_denoiser(sched, 0.2), sched, torch.randn(8, 1), torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, 0.2))


def test_unknown_variance_is_named():
    with pytest.raises(ConfigError, match="variance='learned'"):
        Denoiser(torch.nn.Identity(), schedules.linear(num_timesteps=10), variance="learned")


def test_ddpm_without_noise_collapses_a_gaussian_towards_its_mean():
    sched = schedules.linear()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(5_000, 1, generator=g)
    out = DDPMSampler(noise_scale=0.0)(gaussian_denoiser(sched, 0.3, 0.5, clip_denoised=False), sched, x_T, g)
    assert out.mean().item() == pytest.approx(0.3, abs=0.02)
    assert out.std().item() < 0.5 * 0.5  # far narrower than the data's 0.5
