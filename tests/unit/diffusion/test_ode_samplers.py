"""The Euler and Heun samplers of ddpm.diffusion.ode_samplers, each against an independent computation:
k-diffusion's ``sample_euler`` / ``sample_heun`` (EDM's Algorithms 1 and 2) call by call, diffusers'
``FlowMatchEulerDiscreteScheduler`` and ``EDMEulerScheduler`` step by step, the exact denoiser of a Gaussian mixture
(the samples reproduce the mixture on VP, EDM and flow), and the grids, NFE counts and bad input."""

import math

import pytest
import torch
from support.oracles import GaussianMixturePosteriorMean
from support.recorder import Recorder
from support.sampler_checks import k_diffusion_sigmas, mixture_z
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.ode_samplers import (FLOW_NOISE_RANGE, EulerSampler, HeunSampler, clean_time, noise_range,
                                         time_grid)
from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess, edm_preconditioning, karras_noise_levels
from ddpm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLERS = {"euler": EulerSampler, "heun": HeunSampler}
PROCESSES = {"vp": lambda: VPProcess(schedules.linear(num_timesteps=1000)), "edm": EDMProcess, "flow": FlowProcess}


def mlp(dim: int, dtype, seed: int) -> nn.Module:
    """A fixed nonlinear network (random weights) of (x (B, dim), t (B,)) -> (B, dim)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim + 1, 32), nn.SiLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, dim)).to(dtype)
    return lambda x, t: net(torch.cat([x, t.to(x.dtype).view(-1, 1)], dim=1))


def edm_denoiser(net):
    """EDM's D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Table 1) around a fixed network F."""
    def denoise(x, sigma):
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype).view(-1, 1) for c in edm_preconditioning(sigma.double()))
        return c_skip * x + c_out * net(c_in * x, c_noise.view(-1))
    return denoise


def max_difference(calls, reference_calls) -> float:
    assert len(calls) == len(reference_calls)
    return max(max((a - b).abs().max().item(), (s - r).abs().max().item())
               for (a, s), (b, r) in zip(calls, reference_calls))


# ---- 1. EDM: k-diffusion's sample_euler / sample_heun, call by call ---------------------------------------------
@pytest.mark.parametrize("spacing", ["karras", "log_snr"])
@pytest.mark.parametrize("churn", ["none", "all_steps", "window"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_edm_euler_and_heun_are_k_diffusions_algorithms_call_by_call(name, churn, spacing, monkeypatch):
    """Every network call (x, sigma) and the result equal k-diffusion's in float64. Churn noise: k-diffusion draws
    torch.randn_like(x) at every step from torch's global generator, ours one torch.randn per churned step from
    ``generator``. Churn on every step (S_tmin = 0, S_tmax = inf): both generators seeded alike draw the same
    stream. Churn in a window: k-diffusion's randn_like is replaced by the explicit sequence ours draws (a
    same-seeded generator, one draw per step whose sigma lies in [S_tmin, S_tmax]; zeros elsewhere, unused)."""
    import k_diffusion.sampling as ks

    process, steps, seed = EDMProcess(), 12, 5
    options = {"none": {}, "all_steps": {"S_churn": 3.0}, "window": {"S_churn": 30.0, "S_tmin": 0.05, "S_tmax": 10.0}}
    options = options[churn]
    sigmas = k_diffusion_sigmas(spacing, steps, process.sigma_min, process.sigma_max)
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    denoise = edm_denoiser(mlp(4, torch.float64, seed=1))

    ours = Recorder(denoise)
    out = SAMPLERS[name](steps, spacing, **options)(ours, process, x_T, torch.Generator().manual_seed(seed))

    theirs = Recorder(denoise)
    reference = getattr(ks, f"sample_{name}")
    kwargs = {"s_churn": options.get("S_churn", 0.0), "s_tmin": options.get("S_tmin", 0.0),
              "s_tmax": options.get("S_tmax", math.inf), "disable": True}
    if churn == "window":
        draw = torch.Generator().manual_seed(seed)
        noise = [torch.randn(x_T.shape, generator=draw, dtype=x_T.dtype) if kwargs["s_tmin"] <= s <= kwargs["s_tmax"]
                 else torch.zeros_like(x_T) for s in sigmas[:-1].tolist()]
        monkeypatch.setattr(torch, "randn_like", lambda x: noise.pop(0))
    torch.manual_seed(seed)
    want = reference(lambda x, sigma: theirs(x, sigma), x_T * sigmas[0], sigmas, **kwargs)
    monkeypatch.undo()

    assert len(ours.calls) == SAMPLERS[name](steps).nfe()
    assert max_difference(ours.calls, theirs.calls) < 1e-5
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


# ---- 2. diffusers' schedulers, step by step ---------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_flow_euler_is_diffusers_flow_match_euler_scheduler(spacing):
    """Flow: ours with x0_hat = x - t v(x, t) (v the velocity model) against FlowMatchEulerDiscreteScheduler on the
    same times (its sigmas are flow times; it steps x + (sigma_next - sigma) v), from the same start."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    process, steps = FlowProcess(), 10
    velocity = mlp(3, torch.float32, seed=2)
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    ours = Recorder(lambda x, t: x - t.view(-1, 1) * velocity(x, t))
    out = EulerSampler(steps, spacing)(ours, process, x_T)

    grid = time_grid(process, steps, spacing)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=grid.t[:-1].tolist())
    x, theirs = float(grid.t[0]) * x_T, []
    for timestep in scheduler.timesteps:
        t = (timestep / 1000).expand(x.shape[0])
        theirs.append((x, t))
        x = scheduler.step(velocity(x, t), timestep, x).prev_sample
    assert max_difference(ours.calls, theirs) < 1e-5
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_edm_euler_is_diffusers_edm_euler_scheduler():
    """EDM: ours with D = c_skip x + c_out F(c_in x, c_noise) (processes.edm_preconditioning) against
    EDMEulerScheduler, which scales the input (scale_model_input: c_in), calls F at c_noise (its timesteps) and
    preconditions the output (c_skip, c_out) itself: x0_hat -> next x on the same grid, in float32, every step. The
    start is EDM's x = sigma_max x_T (diffusers' pipelines start at sqrt(sigma_max^2 + 1) x_T instead). The ODE
    only: its churn adds the noise inside ``step``, after the network saw the unchurned x at sigma, and
    preconditions that output at sigma_hat, which is not Algorithm 2 (k-diffusion's is; see the test above)."""
    from diffusers import EDMEulerScheduler

    process, steps = EDMProcess(), 10
    net = mlp(3, torch.float32, seed=3)
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    ours = Recorder(edm_denoiser(net))
    out = EulerSampler(steps)(ours, process, x_T)

    scheduler = EDMEulerScheduler(sigma_min=process.sigma_min, sigma_max=process.sigma_max,
                                  sigma_data=process.sigma_data, prediction_type="epsilon", rho=7.0)
    scheduler.set_timesteps(steps)
    x, theirs = process.sigma_max * x_T, []
    for timestep in scheduler.timesteps:
        theirs.append(x)
        output = net(scheduler.scale_model_input(x, timestep), timestep.expand(x.shape[0]))
        x = scheduler.step(output, timestep, x).prev_sample
    assert len(ours.calls) == len(theirs) == steps
    for (mine, _), reference in zip(ours.calls, theirs):  # the state at every step
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


# ---- 3. exactness: the exact denoiser of a Gaussian mixture reproduces the mixture ------------------------------
WEIGHTS, MEANS, STDS = [0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.2]
MIXTURE_CASES = {  # Heun 18 steps is biased by up to ~4 standard errors on the sharpest mode at 4000 samples
    "heun-40": lambda process: HeunSampler(40),
    "euler-200": lambda process: EulerSampler(200),
    "heun-40-log_snr": lambda process: HeunSampler(40, spacing="log_snr"),
    # churn; on flow from t = 1 (uniform), where nu = inf is never churned
    "heun-60-churn": lambda process: HeunSampler(60, "uniform" if isinstance(process, FlowProcess) else "karras",
                                                 S_churn=6.0),
}


@pytest.mark.parametrize("case", MIXTURE_CASES)
@pytest.mark.parametrize("process_name", PROCESSES)
def test_the_exact_mixture_denoiser_samples_the_mixture(process_name, case):
    """4000 samples, each on its nearest mode: per mode the weight, and per coordinate the mean and std of the samples
    within 5 stds of it, within 4.5 standard errors of the mixture's (w(1-w)/n, s^2/n_k, s^2/(2 n_k)); samples off
    every mode (between modes, where finite steps leave a few) are under 0.5%."""
    process, n = PROCESSES[process_name](), 4000
    sampler = MIXTURE_CASES[case](process)
    denoise = GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sampler(denoise, process, x_T, torch.Generator().manual_seed(1))

    z = mixture_z(x, WEIGHTS, MEANS, STDS)
    assert z.abs().max() < 4.5, z


def test_flow_and_edm_euler_are_the_same_sampler_on_the_same_noise_levels():
    """x / alpha on flow is EDM's variable, and on a grid of the same noise levels (karras) the Euler step in flow's
    t is EDM's Euler step in sigma (both are DDIM): every call's x / alpha and noise level agree, churn included."""
    flow, edm = FlowProcess(), EDMProcess()
    x_T = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results, calls = [], []
    for process, start in ((flow, 80.0 / 81.0), (edm, 80.0)):
        exact = GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS)
        recorder = Recorder(exact)
        sampler = EulerSampler(15, S_churn=5.0)
        # flow starts at sigma(t_0) x_T = (80/81) x_T, i.e. x / alpha = 80 x_T: EDM's start
        results.append(sampler(recorder, process, x_T, torch.Generator().manual_seed(3)))
        calls.append([(x / process.alpha(t.double()).view(-1, 1), process.noise_level(t.double()))
                      for x, t in recorder.calls])
    assert max_difference(calls[0], calls[1]) < 1e-9
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-9)


# ---- 4. grids, NFE, the start, bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("spacing", ["karras", "uniform", "log_snr"])
@pytest.mark.parametrize("process_name", PROCESSES)
def test_grids_run_from_the_start_to_the_clean_end_strictly_decreasing(process_name, spacing, steps):
    process = PROCESSES[process_name]()
    grid = time_grid(process, steps, spacing)
    assert grid.t.shape == grid.nu.shape == (steps + 1,) and grid.t.dtype == torch.float64
    assert bool((grid.t[:-1] > grid.t[1:]).all()) and bool((grid.nu[:-1] > grid.nu[1:]).all())
    assert grid.nu[-1] == 0 and grid.t[-1] == {"vp": -1.0, "edm": 0.0, "flow": 0.0}[process_name] == clean_time(process)
    torch.testing.assert_close(process.noise_level(grid.t[:-1]), grid.nu[:-1], rtol=1e-9, atol=0)
    nu_min, nu_max = noise_range(process)
    if spacing == "uniform":
        assert grid.t[0] == process.t_max
        torch.testing.assert_close(grid.t.diff(), torch.full((steps,), (grid.t[-1] - grid.t[0]).item() / steps,
                                                             dtype=torch.float64))
    elif spacing == "karras":
        torch.testing.assert_close(grid.nu, karras_noise_levels(steps, nu_min, nu_max, 7.0), rtol=1e-9, atol=0)
    else:
        assert math.isclose(grid.nu[0], nu_max, rel_tol=1e-12)
        assert steps == 1 or math.isclose(grid.nu[-2], nu_min, rel_tol=1e-12)
        if steps > 2:
            log_snr = -2 * grid.nu[:-1].log()
            torch.testing.assert_close(log_snr.diff(), log_snr.diff().mean().expand(steps - 1))


def test_karras_grid_is_eq5_mapped_to_each_process_time():
    """EDM: t = k-diffusion's get_sigmas_karras; VP: starts at T-1 and its last noisy time is t = 0; flow: EDM's
    noise-level range by default, t = nu / (1 + nu)."""
    from k_diffusion.sampling import get_sigmas_karras

    edm, vp, flow = EDMProcess(), PROCESSES["vp"](), FlowProcess()
    torch.testing.assert_close(time_grid(edm, 18, "karras").t.float(), get_sigmas_karras(18, 0.002, 80.0))
    t = time_grid(vp, 18, "karras").t
    assert math.isclose(t[0], 999, abs_tol=1e-9) and math.isclose(t[-2], 0, abs_tol=1e-9)
    nu = karras_noise_levels(18, *FLOW_NOISE_RANGE)
    torch.testing.assert_close(time_grid(flow, 18, "karras").t, nu / (1 + nu))
    custom = time_grid(edm, 5, "karras", rho=3.0, nu_min=0.01, nu_max=10.0)
    torch.testing.assert_close(custom.t, karras_noise_levels(5, 0.01, 10.0, 3.0))


@pytest.mark.parametrize("churn", [0.0, 10.0])
@pytest.mark.parametrize("steps", [1, 2, 9])
@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("process_name", PROCESSES)
def test_nfe_counts_the_network_calls_and_the_start_is_sigma_t0_x_T(process_name, name, steps, churn):
    """Euler: one call per step; Heun: two, but one on the last step (to nu = 0, Euler): 2N - 1. The first call
    sees sigma(t_0) x_T at t_0 (unchurned: nu(t_0) is the top, or churn is off)."""
    process = PROCESSES[process_name]()
    sampler = SAMPLERS[name](steps, S_churn=churn, S_tmax=0.5)
    exact = Recorder(GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS))
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    out = sampler(exact, process, x_T, torch.Generator().manual_seed(1))
    assert len(exact.calls) == sampler.nfe() == {"euler": steps, "heun": 2 * steps - 1}[name]
    assert sampler.nfe(18) == {"euler": 18, "heun": 35}[name]
    t0 = time_grid(process, steps).t[0]
    x, t = exact.calls[0]
    torch.testing.assert_close(x, (process.sigma(t0) * x_T).float())
    torch.testing.assert_close(t, t0.float().expand(3))
    assert out.dtype == x_T.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("options, named", [
    ({"steps": 0}, "steps=0"), ({"steps": 2.5}, "steps=2.5"), ({"steps": True}, "steps=True"),
    ({"rho": 0}, "rho=0"), ({"rho": -7.0}, "rho=-7.0"),
    ({"S_churn": -1.0}, "S_churn=-1.0"), ({"S_noise": 0.0}, "S_noise=0.0"), ({"S_noise": -1}, "S_noise=-1"),
    ({"spacing": "cosine"}, "spacing='cosine'"), ({"S_tmin": 2.0, "S_tmax": 1.0}, "S_tmin=2.0"),
])
def test_bad_input_is_one_config_error_line(name, options, named):
    with pytest.raises(ConfigError) as error:
        SAMPLERS[name](**options)
    message = str(error.value)
    assert named in message and "\n" not in message and "allowed" in message


def test_bad_grid_input_is_a_config_error():
    with pytest.raises(ConfigError, match="spacing='linear'"):
        time_grid(EDMProcess(), 5, "linear")
    with pytest.raises(ConfigError, match="nu_min=5.0"):
        time_grid(EDMProcess(), 5, "karras", nu_min=5.0, nu_max=1.0)
    with pytest.raises(ConfigError, match="outside"):  # VP's noise levels end at nu(T-1) ~ 157
        time_grid(PROCESSES["vp"](), 5, "karras", nu_max=1000.0)
