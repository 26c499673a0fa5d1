"""What every sampler promises (``sampler(denoiser, schedule, x_T, generator=None, cond=None) -> x_0``), each
promise written once and checked for DDPM, DDIM (eta 0 and 1) and DPM-Solver++(2M). Driven by exact denoisers
(support/oracles.py: closed-form posterior means), a sampler must reproduce the data they imply.
What one sampler alone does (step sequences, DDIM against DDPM, second order against 1000 steps, the config
files): test_samplers.py."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from ddpm.diffusion import schedules
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from support.oracles import gaussian_denoiser, point_denoiser
from support.runs import CONF

MU, STD = 0.3, 0.5


def samplers(steps: int) -> list:
    """One of each sampler, the subsequence ones at ``steps`` denoiser calls; DDPM takes every timestep."""
    return [pytest.param(DDPMSampler(), id="ddpm"), pytest.param(DDIMSampler(steps, eta=0.0), id=f"ddim{steps}-eta0"),
            pytest.param(DDIMSampler(steps, eta=1.0), id=f"ddim{steps}-eta1"),
            pytest.param(DPMSolverSampler(steps), id=f"dpm_solver{steps}")]


def draws_noise(sampler) -> bool:
    return isinstance(sampler, DDPMSampler) or (isinstance(sampler, DDIMSampler) and sampler.eta > 0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: a second thread only adds contention


# ---- exact denoisers: the data they imply -------------------------------------------------------
@pytest.mark.parametrize("sampler, options", [
    pytest.param(DDPMSampler(), {"variance": "fixed_small", "clip_denoised": False}, id="ddpm-fixed_small"),
    pytest.param(DDPMSampler(), {"variance": "fixed_large", "clip_denoised": False}, id="ddpm-fixed_large"),
    pytest.param(DDIMSampler(10, eta=0.0), {}, id="ddim10-eta0"),
    pytest.param(DDIMSampler(10, eta=1.0), {}, id="ddim10-eta1"),
    pytest.param(DPMSolverSampler(10), {}, id="dpm_solver10"),
])
def test_every_sampler_returns_the_single_data_point(sampler, options):
    sched = schedules.linear(num_timesteps=200)
    point = torch.tensor([[0.5, -0.25], [0.9, -1.0]]).view(1, 1, 2, 2)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sampler(point_denoiser(sched, point, **options), sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(out, point.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("sampler, variance, n, mean_abs, std_rel", [
    # n draws: standard errors of about 0.5 / sqrt(n) (mean) and 1 / sqrt(2n) (std)
    pytest.param(DDPMSampler(), "fixed_small", 20_000, 0.015, 0.03, id="ddpm-fixed_small"),
    pytest.param(DDPMSampler(), "fixed_large", 20_000, 0.015, 0.03, id="ddpm-fixed_large"),
    # DDIM is first order: at 50 steps it still shrinks the std by 3-10% on this oracle (measured),
    # hence 200 steps here; the second-order solver gets there in 20.
    pytest.param(DDIMSampler(200, eta=0.0, spacing="quadratic"), "fixed_small", 8000, 0.02, 0.035, id="ddim200-eta0"),
    pytest.param(DDIMSampler(200, eta=1.0, spacing="quadratic"), "fixed_small", 8000, 0.02, 0.035, id="ddim200-eta1"),
    pytest.param(DPMSolverSampler(20), "fixed_small", 8000, 0.02, 0.035, id="dpm_solver20"),
])
def test_every_sampler_reproduces_a_gaussian_data_distribution(sampler, variance, n, mean_abs, std_rel):
    sched = schedules.linear()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 1, generator=g)
    out = sampler(gaussian_denoiser(sched, MU, STD, variance=variance, clip_denoised=False), sched, x_T, g)
    assert out.mean().item() == pytest.approx(MU, abs=mean_abs)
    assert out.std().item() == pytest.approx(STD, rel=std_rel)


@pytest.mark.parametrize("sampler", samplers(10))
def test_every_sampler_clips_the_predicted_x0(sampler):
    sched = schedules.linear(num_timesteps=100)
    out = sampler(point_denoiser(sched, 3.0, clip_denoised=True), sched, torch.zeros(4, 1), torch.Generator())
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)  # the last step returns x0 = clip(3) = 1


@pytest.mark.parametrize("sampler", samplers(1))
def test_the_last_step_of_every_sampler_adds_no_noise(sampler):
    sched = schedules.linear(num_timesteps=1)
    out = sampler(point_denoiser(sched, 0.2), sched, torch.randn(8, 1), torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, 0.2))


# ---- the generator, x_T, the condition and the steps ----------------------------------------------
@pytest.mark.parametrize("sampler", samplers(10))
def test_every_sampler_is_reproducible_from_a_seed_and_only_a_stochastic_one_draws_from_it(sampler):
    sched = schedules.linear(num_timesteps=50)
    model = gaussian_denoiser(sched, MU, STD)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    a, b = sampler(model, sched, x_T, g), sampler(model, sched, x_T, torch.Generator().manual_seed(5))
    c = sampler(model, sched, x_T, torch.Generator().manual_seed(6))
    assert a.shape == x_T.shape and torch.equal(a, b)
    if draws_noise(sampler):
        assert not torch.equal(a, c)
    else:  # a deterministic sampler leaves the generator where it was: its draws are another's
        assert torch.equal(a, c) and torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state())
    assert not torch.equal(sampler(model, sched, x_T + 1, torch.Generator().manual_seed(5)), a)  # x_T is used


class Recording:
    """A denoiser that records what each call is given, and answers the unconditional exact one's prediction."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def __call__(self, x_t, t, cond=None):
        self.calls.append((x_t.shape, t.clone(), cond))
        return self.denoiser(x_t, t)


@pytest.mark.parametrize("sampler", samplers(7))
def test_every_sampler_calls_the_denoiser_once_per_timestep_in_order_with_the_condition(sampler):
    sched = schedules.linear(num_timesteps=20)
    denoiser = Recording(gaussian_denoiser(sched, MU, STD))
    x_T, cond = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.arange(5)
    sampler(denoiser, sched, x_T, torch.Generator().manual_seed(1), cond)
    timesteps = sampler.timesteps(sched)
    assert len(timesteps) == (20 if isinstance(sampler, DDPMSampler) else 7)
    assert [int(t[0]) for _, t, _ in denoiser.calls] == timesteps  # from T - 1 down, one call each
    assert all(shape == x_T.shape and t.shape == (5,) and (t == t[0]).all() for shape, t, _ in denoiser.calls)
    assert all(c is cond for _, _, c in denoiser.calls)


@pytest.fixture(scope="module")
def tiny_module():
    from ddpm.runs.build import build_module

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=unet_tiny", "schedule.num_timesteps=20"])
    return build_module(cfg)


@pytest.mark.parametrize("sampler", samplers(5))
def test_every_sampler_runs_on_a_network_through_the_module_sample_path(tiny_module, sampler):
    images = tiny_module.sample(3, torch.Generator().manual_seed(0), sampler=sampler)
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1 and not math.isnan(images.sum().item())
