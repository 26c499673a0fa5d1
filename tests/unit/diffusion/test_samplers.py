"""DDIM and DPM-Solver++(2M): step sequences, agreement with DDPM, and closed-form oracles.

For data N(mu, std^2) the probability-flow ODE is linear: x_t = sqrt(abar_t) mu + s_t z with
s_t = sqrt(abar_t std^2 + 1 - abar_t) and z fixed along the path, so x_T maps to
mu + std (x_T - sqrt(abar_T) mu) / s_T. Deterministic samplers are checked path by path against it.
"""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, step_pairs, timestep_sequence
from support.oracles import gaussian_denoiser, point_denoiser
from support.runs import CONF

MU, STD = 0.3, 0.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Elementwise ops on a few thousand scalars: threading only adds overhead on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sched():
    return schedules.linear()


def flow_map(sched, x_T):
    """The exact ODE endpoint of x_T for data N(MU, STD^2), in float64."""
    ab = sched.alphas_cumprod[-1].double()
    return MU + STD * (x_T.double() - ab.sqrt() * MU) / (ab * STD**2 + 1 - ab).sqrt()


# ---- step sequences ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("uniform", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        # round(linspace(0, sqrt(999), 10)^2), e.g. (3.512 * 1)^2 = 12.33 -> 12
        ("quadratic", [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]),
        # Lin et al. 2024: stride T/S = 100 from T-1; the next point after 99 is the clean image
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_timestep_sequences_for_1000_steps_and_10_calls_are_pinned(sched, spacing, expected):
    assert timestep_sequence(sched, 10, spacing) == expected


def test_short_sequences_start_at_the_last_timestep_with_no_off_by_one(sched):
    assert timestep_sequence(sched, 3, "linspace") == [999, 500, 0]  # not [667, 334, 1]
    assert timestep_sequence(sched, 3, "trailing") == [999, 666, 332]
    assert timestep_sequence(sched, 1, "linspace") == [999]
    assert step_pairs([999, 500, 0]) == [(999, 500), (500, 0), (0, -1)]


def test_logsnr_spacing_is_uniform_in_lambda(sched):
    ts = timestep_sequence(sched, 10, "logsnr")
    lam = 0.5 * sched.snr.double().log()
    assert ts[0] == 999 and ts[-1] == 0
    gaps = (lam[ts[1:]] - lam[ts[:-1]]).numpy()
    target = (lam[0] - lam[999]).item() / 9
    # each point is the nearest integer t, so a gap is off by at most one timestep's lambda increment
    assert abs(gaps - target).max() < 0.1 * target


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "quadratic", "logsnr"])
def test_as_many_steps_as_timesteps_visits_every_timestep_once(spacing):
    sched = schedules.linear(num_timesteps=50)
    assert timestep_sequence(sched, 50, spacing) == list(range(49, -1, -1))
    ts = timestep_sequence(sched, 30, spacing)  # rounding collisions are pushed apart, not dropped
    assert len(ts) == 30 and all(a > b for a, b in zip(ts, ts[1:])) and ts[0] == 49


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DDIMSampler(steps=0), "steps=0"),
        (lambda: DDIMSampler(eta=1.5), "eta=1.5"),
        (lambda: DDIMSampler(spacing="leading"), "spacing='leading'"),
        (lambda: DPMSolverSampler(steps=2.5), "steps=2.5"),
        (lambda: timestep_sequence(schedules.linear(num_timesteps=20), 21), "steps=21 .* T=20"),
    ],
)
def test_bad_sampler_options_are_named(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# ---- DDIM against DDPM ------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_over_all_steps_with_eta_1_is_ddpm_fixed_small(sched, clip):
    # sigma_t(eta=1) with t' = t-1 is sqrt(beta~_t), and both draw one z per step in the same order.
    model = gaussian_denoiser(sched, MU, 1.0, clip_denoised=clip)  # wide enough that clipping x0 to [-1, 1] matters
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    ddpm = DDPMSampler()(model, sched, x_T, torch.Generator().manual_seed(1))
    ddim = DDIMSampler(steps=1000, eta=1.0)(model, sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(ddim, ddpm, atol=1e-4)


def test_ddim_with_eta_0_is_deterministic_and_draws_no_noise(sched):
    model = gaussian_denoiser(sched, MU, STD)
    x_T = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    before = g1.get_state()
    a = DDIMSampler(steps=20, eta=0.0)(model, sched, x_T, g1)
    b = DDIMSampler(steps=20, eta=0.0)(model, sched, x_T, g2)
    assert torch.equal(a, b)
    assert torch.equal(g1.get_state(), before)


def test_ddim_eta_1_is_reproducible_from_a_seed(sched):
    model = gaussian_denoiser(sched, MU, STD)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    a, b = (DDIMSampler(10, eta=1.0)(model, sched, x_T, torch.Generator().manual_seed(5)) for _ in range(2))
    c = DDIMSampler(10, eta=1.0)(model, sched, x_T, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- closed-form oracles ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "sampler",
    [
        DDIMSampler(200, eta=0.0, spacing="quadratic"),
        DDIMSampler(200, eta=1.0, spacing="quadratic"),
        DPMSolverSampler(20),
    ],
    ids=["ddim200-eta0", "ddim200-eta1", "dpm_solver20"],
)
def test_each_sampler_reproduces_a_gaussian_data_distribution(sched, sampler):
    # DDIM is first order: at 50 steps it still shrinks the std by 3-10% on this oracle (measured),
    # hence 200 steps here; the second-order solver gets there in 20.
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(8000, 1, generator=g)
    out = sampler(gaussian_denoiser(sched, MU, STD, clip_denoised=False), sched, x_T, g)
    # 8000 draws: standard errors 0.0056 (mean) and 0.8% (std)
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(STD, rel=0.035)


@pytest.mark.parametrize("sampler", [DDIMSampler(10, eta=0.0), DDIMSampler(10, eta=1.0), DPMSolverSampler(10)])
def test_each_sampler_returns_the_single_data_point(sampler):
    sched = schedules.linear(num_timesteps=200)
    point = torch.tensor([[0.5, -0.25], [0.9, -1.0]]).view(1, 1, 2, 2)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sampler(point_denoiser(sched, point), sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(out, point.expand_as(out), atol=1e-5)


def test_dpm_solver_at_20_steps_lands_on_the_1000_step_answer(sched):
    model = gaussian_denoiser(sched, MU, STD, clip_denoised=False)
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
    exact = flow_map(sched, x_T)
    ode_1000 = DDIMSampler(1000, eta=0.0)(model, sched, x_T)
    ddpm_1000 = DDPMSampler()(model, sched, x_T, torch.Generator().manual_seed(1))
    fast = DPMSolverSampler(20)(model, sched, x_T)
    ddim_20 = DDIMSampler(20, eta=0.0)(model, sched, x_T)

    assert (ode_1000.double() - exact).abs().max() < 0.01  # the 1000-step ODE answer is the flow map
    assert (fast - ode_1000).abs().max() < 0.05  # path by path, 20 steps against 1000
    err_fast, err_ddim = ((s.double() - exact).abs().max().item() for s in (fast, ddim_20))
    assert err_fast < err_ddim / 4  # second order beats DDIM at the same 20 model calls
    # in distribution, against 1000-step ancestral DDPM on the same x_T (std error of std ~1.6%)
    assert fast.mean().item() == pytest.approx(ddpm_1000.mean().item(), abs=0.03)
    assert fast.std().item() == pytest.approx(ddpm_1000.std().item(), rel=0.05)


# ---- config files -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "choice, overrides, cls, steps",
    [
        ("ddim", ["sampler.steps=25", "sampler.eta=1.0", "sampler.spacing=quadratic"], DDIMSampler, 25),
        ("dpm_solver", ["sampler.steps=10"], DPMSolverSampler, 10),
        ("ddpm", [], DDPMSampler, 1000),
    ],
)
def test_sampler_config_files_compose_and_instantiate(choice, overrides, cls, steps):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"sampler={choice}", *overrides])
    sampler = instantiate(cfg.sampler)
    assert isinstance(sampler, cls) and sampler.name == choice
    assert len(sampler.timesteps(schedules.linear())) == steps


def test_every_sampler_runs_on_a_network_through_the_module_sample_path():
    from ddpm.runs.build import build_module

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=unet_tiny", "schedule.num_timesteps=20"])
    module = build_module(cfg)
    for sampler in (DDPMSampler(), DDIMSampler(5, eta=1.0), DPMSolverSampler(5)):
        images = module.sample(3, torch.Generator().manual_seed(0), sampler=sampler)
        assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1 and not math.isnan(images.sum().item())
