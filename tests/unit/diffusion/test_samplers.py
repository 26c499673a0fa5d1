"""What one sampler alone does: step sequences, DDIM against DDPM, DDPM without noise, DPM-Solver++(2M) at 20
steps against the 1000-step answer, and the sampler config files. What every sampler promises (seeds, x_T,
the condition, clipping, the data of exact denoisers): test_sampler_contracts.py.

For data N(mu, std^2) the probability-flow ODE is linear: x_t = sqrt(abar_t) mu + s_t z with
s_t = sqrt(abar_t std^2 + 1 - abar_t) and z fixed along the path, so x_T maps to
mu + std (x_T - sqrt(abar_T) mu) / s_T. Deterministic samplers are checked path by path against it.
"""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, step_pairs, timestep_sequence
from support.oracles import gaussian_denoiser
from support.runs import CONF

MU, STD = 0.3, 0.5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: a second thread only adds contention


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


# ---- closed-form oracles ----------------------------------------------------------------------
def test_ddpm_without_noise_collapses_a_gaussian_towards_its_mean():
    sched = schedules.linear()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(5_000, 1, generator=g)
    out = DDPMSampler(noise_scale=0.0)(gaussian_denoiser(sched, 0.3, 0.5, clip_denoised=False), sched, x_T, g)
    assert out.mean().item() == pytest.approx(0.3, abs=0.02)
    assert out.std().item() < 0.5 * 0.5  # far narrower than the data's 0.5


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
