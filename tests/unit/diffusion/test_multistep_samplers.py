"""DPM-Solver++(2M)/(3M) and Euler-Maruyama of ddpm.diffusion.multistep_samplers, each against an independent
computation: k-diffusion's ``sample_dpmpp_2m`` / ``sample_dpmpp_3m_sde(eta=0)`` call by call on EDM, EDM's run mapped
by x / alpha on VP and flow (DPM-Solver++ does not see the path's scale), one Euler-Maruyama step against Song et al.'s
Eq. 6 written out per process, the exact denoiser of a Gaussian mixture (the samples reproduce the mixture on VP, EDM
and flow), and the NFE, the evaluation times (Euler and Heun included) and bad input."""

import math

import pytest
import torch
from support.oracles import GaussianMixturePosteriorMean
from support.recorder import Recorder
from support.sampler_checks import k_diffusion_sigmas, mixture_z
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.multistep_samplers import (DPMSolver2MSampler, DPMSolver3MSampler, DPMSolverPPSampler,
                                               EulerMaruyamaSampler)
from ddpm.diffusion.ode_samplers import EulerSampler, HeunSampler, time_grid
from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess
from ddpm.diffusion.samplers import DPMSolverSampler
from ddpm.diffusion.timesteps import timestep_sequence
from ddpm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLERS = {"dpmpp_2m": DPMSolver2MSampler, "dpmpp_3m": DPMSolver3MSampler, "euler_maruyama": EulerMaruyamaSampler}
PROCESSES = {"vp": lambda: VPProcess(schedules.linear(num_timesteps=1000)), "edm": EDMProcess, "flow": FlowProcess}
WEIGHTS, MEANS, STDS = [0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.2]


def mixture(process):
    return GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS)


def seeded_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- 1. EDM: k-diffusion's DPM-Solver++(2M) and (3M), call by call ---------------------------------------------
@pytest.mark.parametrize("spacing", ["karras", "log_snr"])
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m"])
def test_edm_dpm_solver_pp_is_k_diffusions_call_by_call(name, spacing):
    """On k-diffusion's own sigmas (get_sigmas_karras / get_sigmas_exponential, which our grid equals), every
    network call (x, sigma) and the result equal sample_dpmpp_2m's / sample_dpmpp_3m_sde's at eta = 0 (no noise)."""
    from k_diffusion import sampling

    process, steps = EDMProcess(), 12
    sigmas = k_diffusion_sigmas(spacing, steps, process.sigma_min, process.sigma_max)
    sampler = SAMPLERS[name](steps, spacing)
    torch.testing.assert_close(sampler.grid(process).t, sigmas, rtol=1e-12, atol=0)
    x_T = seeded_noise(64)

    ours = Recorder(mixture(process))
    out = sampler(ours, process, x_T)
    theirs = Recorder(mixture(process))
    if name == "dpmpp_2m":
        want = sampling.sample_dpmpp_2m(theirs, x_T * sigmas[0], sigmas, disable=True)
    else:
        want = sampling.sample_dpmpp_3m_sde(theirs, x_T * sigmas[0], sigmas, disable=True, eta=0.0,
                                            noise_sampler=lambda sigma, sigma_next: torch.zeros_like(x_T))
    assert len(ours.calls) == len(theirs.calls) == steps
    for (x, t), (x_ref, sigma_ref) in zip(ours.calls, theirs.calls):
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-10)  # float64: they agree to ~1e-14
        torch.testing.assert_close(t, sigma_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("process_name", ["vp", "flow"])
def test_dpm_solver_pp_on_vp_and_flow_is_the_edm_run_scaled_by_alpha(process_name, name):
    """Written in lambda, DPM-Solver++ is the same sampler on every path: on the same noise levels every call's
    x / alpha and noise level, and the result, equal EDM's in float64 (x / alpha at the start: nu_0 x_T on both)."""
    x_T, options = seeded_noise(50), {"nu_min": 0.02, "nu_max": 80.0}
    calls, results = [], []
    for process in (PROCESSES[process_name](), EDMProcess()):
        recorder = Recorder(mixture(process))
        results.append(SAMPLERS[name](15, "karras", **options)(recorder, process, x_T))
        calls.append([(x / process.alpha(t).view(-1, 1), process.noise_level(t)) for x, t in recorder.calls])
    for (x, nu), (x_edm, nu_edm) in zip(*calls):
        torch.testing.assert_close(nu, nu_edm, rtol=1e-9, atol=0)
        torch.testing.assert_close(x, x_edm, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-9)


def test_vp_dpm_solver_2m_on_uniform_times_is_the_discrete_dpm_solver_on_trailing_timesteps():
    """VP's ``uniform`` grid at T = 1000, N = 10 is 999, 899, ..., 99, then the clean end, the discrete sampler's
    ``trailing`` timesteps: the same Algorithm 2 on the same times gives samplers.DPMSolverSampler's result (a
    Denoiser of x0-prediction around the exact mixture denoiser, unclipped; it runs in float32, from the x it is
    given, here ours: sigma(999) x_T)."""
    schedule = schedules.linear(num_timesteps=1000)
    process, x_T = VPProcess(schedule), seeded_noise(200)
    exact = mixture(process)

    class MixtureNet(nn.Module):
        def forward(self, x, t, *cond):
            return exact(x.double(), t.double()).to(x.dtype)

    assert time_grid(process, 10, "uniform").t[:-1].tolist() == timestep_sequence(schedule, 10, "trailing")
    ours = DPMSolver2MSampler(10, "uniform")(exact, process, x_T)
    denoiser = Denoiser(MixtureNet(), schedule, prediction_type="x0", clip_denoised=False)
    start = process.sigma(torch.tensor(999.0, dtype=torch.float64)) * x_T  # the discrete sampler starts at x_T itself
    theirs = DPMSolverSampler(10, spacing="trailing")(denoiser, schedule, start)
    torch.testing.assert_close(ours, theirs.double(), rtol=0, atol=1e-4)


# ---- 2. Euler-Maruyama: one step of Song et al.'s Eq. 6 ----------------------------------------------------------
def sde_coefficients(process_name: str, process, t: float) -> tuple[float, float]:
    """(f, g^2) of the forward SDE dx = f x dt + g dw whose marginals are the path, written for each process:
    VP: Song's VP SDE, f = -beta/2, g^2 = beta, beta = -d log(alpha^2)/dt (a central difference of the path's
    log-SNR, linear in t between integers); EDM (alpha = 1, sigma = t): f = 0, g^2 = d(t^2)/dt = 2t; flow
    (alpha = 1 - t, sigma = t): f = -1/(1 - t), g^2 = 2t - 2 f t^2 = 2t / (1 - t)."""
    if process_name == "vp":
        delta = 1e-4
        assert math.floor(t - delta) == math.floor(t + delta)  # one linear segment of the log-SNR
        log_alpha2 = [2 * math.log(float(process.alpha(torch.tensor(u, dtype=torch.float64))))
                      for u in (t - delta, t + delta)]
        beta = -(log_alpha2[1] - log_alpha2[0]) / (2 * delta)
        return -beta / 2, beta
    if process_name == "edm":
        return 0.0, 2 * t
    return -1 / (1 - t), 2 * t / (1 - t)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_euler_maruyama_step_is_the_reverse_sde_of_song_eq6(process_name):
    """x_1 = x_0 + (f x_0 - g^2 score) dt + g sqrt(-dt) z with score = -(x_0 - alpha D) / sigma^2 (D the exact
    denoiser's x0_hat), dt = t_1 - t_0 < 0, z the generator's first draw; then x_2 = D(x_1), the clean end."""
    process, x_T = PROCESSES[process_name](), seeded_noise(20)
    sampler = EulerMaruyamaSampler(3, "karras", nu_max=30.0)
    recorder = Recorder(mixture(process))
    out = sampler(recorder, process, x_T, torch.Generator().manual_seed(4))

    t0, t1 = sampler.grid(process).t[:2].tolist()
    alpha, sigma = (float(c(torch.tensor(t0, dtype=torch.float64))) for c in (process.alpha, process.sigma))
    x0 = sigma * x_T
    score = -(x0 - alpha * mixture(process)(x0, torch.full((20,), t0, dtype=torch.float64))) / sigma**2
    f, g2 = sde_coefficients(process_name, process, t0)
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x1 = x0 + (f * x0 - g2 * score) * (t1 - t0) + math.sqrt(g2 * (t0 - t1)) * z
    torch.testing.assert_close(recorder.calls[1][0], x1, rtol=1e-7, atol=1e-9)
    x2, t2 = recorder.calls[2]
    torch.testing.assert_close(out, mixture(process)(x2, t2), rtol=0, atol=0)  # the last step: x0_hat, no noise


@pytest.mark.parametrize("name", SAMPLERS)
def test_from_flows_t_1_the_first_step_is_alpha_1_mean_plus_sigma_1_x_T(name):
    """Uniform spacing on flow starts at t = 1 (alpha = 0, lambda = -inf, f = -inf): x0_hat there is the data mean,
    and the first step is the ODE's, x_1 = alpha(t_1) E[x0] + sigma(t_1) x_T (no noise drawn, finite)."""
    process, x_T = FlowProcess(), seeded_noise(10)
    sampler = SAMPLERS[name](8, "uniform")
    recorder = Recorder(mixture(process))
    out = sampler(recorder, process, x_T, torch.Generator().manual_seed(0))
    t1 = 1 - 1 / 8
    mean = sum(w * torch.tensor(m, dtype=torch.float64) for w, m in zip(WEIGHTS, MEANS))
    torch.testing.assert_close(recorder.calls[1][0], (1 - t1) * mean + t1 * x_T, rtol=0, atol=1e-12)
    assert torch.isfinite(out).all()


# ---- 3. exactness: the exact denoiser of a Gaussian mixture reproduces the mixture ------------------------------
MIXTURE_CASES = {  # worst |z| over seeds 0, 3, 7 on the three processes in brackets
    "dpmpp_2m-25-log_snr": lambda: DPMSolver2MSampler(25),  # [3.0] (18 steps: 4.2; karras 18: 9.0)
    "dpmpp_2m-25-karras": lambda: DPMSolver2MSampler(25, "karras"),  # [3.7]
    "dpmpp_3m-20-log_snr": lambda: DPMSolver3MSampler(20),  # [3.8]
    "dpmpp_3m-25-karras": lambda: DPMSolver3MSampler(25, "karras"),  # [3.8] (18 steps: 13.3 on VP)
    "euler_maruyama-200-karras": lambda: EulerMaruyamaSampler(200),  # [3.8] (100 steps: 3.1)
}


@pytest.mark.parametrize("case", MIXTURE_CASES)
@pytest.mark.parametrize("process_name", PROCESSES)
def test_the_exact_mixture_denoiser_samples_the_mixture(process_name, case):
    """4000 samples: the weights and moments of every mode within 4.5 standard errors of the mixture's."""
    process = PROCESSES[process_name]()
    x = MIXTURE_CASES[case]()(mixture(process), process, seeded_noise(4000), torch.Generator().manual_seed(1))
    z = mixture_z(x, WEIGHTS, MEANS, STDS)
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("name, steps", [("dpmpp_2m", 20), ("dpmpp_3m", 20), ("euler_maruyama", 200)])
def test_from_flows_t_1_the_samplers_sample_the_mixture(name, steps):
    """Flow on ``uniform`` spacing, from the singular start t = 1 (worst |z| 2.7 for DPM, 1.9 for EM over 3 seeds)."""
    process = FlowProcess()
    x = SAMPLERS[name](steps, "uniform")(mixture(process), process, seeded_noise(4000), torch.Generator().manual_seed(1))
    z = mixture_z(x, WEIGHTS, MEANS, STDS)
    assert z.abs().max() < 4.5, z


# ---- 4. NFE, evaluation times, bad input ------------------------------------------------------------------------
ALL_SAMPLERS = {**SAMPLERS, "euler": EulerSampler, "heun": HeunSampler,
                "heun-churn": lambda steps, spacing: HeunSampler(steps, spacing, S_churn=10.0, S_tmax=0.5)}


@pytest.mark.parametrize("spacing", ["karras", "uniform"])
@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("name", ALL_SAMPLERS)
@pytest.mark.parametrize("process_name", PROCESSES)
def test_nfe_and_evaluation_times_are_the_calls(process_name, name, steps, spacing):
    """``evaluation_times`` lists the time of every network call in order, ``nfe()`` of them: the new samplers and
    Euler one per step at t_0 .. t_{N-1}; Heun also its corrector at t_{i+1}, but not on the last (Euler) step; with
    churn the churned t_hat. The first call sees sigma(t_0) x_T."""
    process, x_T = PROCESSES[process_name](), seeded_noise(3)
    sampler = ALL_SAMPLERS[name](steps, spacing)
    recorder = Recorder(mixture(process))
    out = sampler(recorder, process, x_T, torch.Generator().manual_seed(1))
    times = sampler.evaluation_times(process)
    assert len(recorder.calls) == len(times) == sampler.nfe()
    assert sampler.nfe() == (2 * steps - 1 if name.startswith("heun") else steps)
    torch.testing.assert_close(torch.stack([t for _, t in recorder.calls]),
                               torch.tensor(times, dtype=torch.float64)[:, None].expand(-1, 3), rtol=1e-12, atol=0)
    grid = time_grid(process, steps, spacing)
    if name != "heun-churn":
        assert times[:: 2 if name == "heun" else 1] == grid.t[:-1].tolist()
    torch.testing.assert_close(recorder.calls[0][0], process.sigma(grid.t[0]) * x_T)
    assert torch.isfinite(out).all() and out.dtype == x_T.dtype


def test_names_nfe_and_the_default_spacing():
    assert [SAMPLERS[name]().name for name in SAMPLERS] == list(SAMPLERS)
    assert DPMSolverPPSampler(order=3).name == "dpmpp_3m" and DPMSolver3MSampler().order == 3
    assert [SAMPLERS[name]().nfe(25) for name in SAMPLERS] == [25, 25, 25]
    assert DPMSolver2MSampler().spacing == DPMSolver3MSampler().spacing == "log_snr"
    assert EulerMaruyamaSampler().spacing == "karras"


@pytest.mark.parametrize("make, named", [
    (lambda: DPMSolver2MSampler(S_churn=1.0), "S_churn=1.0"),
    (lambda: DPMSolver3MSampler(S_churn=5), "S_churn=5"),
    (lambda: EulerMaruyamaSampler(S_churn=2.0), "S_churn=2.0"),
    (lambda: DPMSolverPPSampler(order=4), "order=4"),
    (lambda: DPMSolverPPSampler(order=1), "order=1"),
    (lambda: DPMSolverPPSampler(order=True), "order=True"),
    (lambda: DPMSolver2MSampler(steps=0), "steps=0"),
    (lambda: EulerMaruyamaSampler(spacing="cosine"), "spacing='cosine'"),
])
def test_bad_input_is_one_config_error_line(make, named):
    with pytest.raises(ConfigError) as error:
        make()
    message = str(error.value)
    assert named in message and "\n" not in message and "allowed" in message
