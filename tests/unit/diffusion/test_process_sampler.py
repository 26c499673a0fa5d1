"""EDM's Euler and Heun on models of the discrete VP chain (ddpm.diffusion.process_sampler, sampler=heun|euler): with the
exact denoiser of a Gaussian mixture they reproduce the mixture, they equal the continuous samplers run on that
denoiser directly, guidance is the eps formula on two separate calls, and the NFE is what they report."""

import math

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.ode_samplers import HeunSampler
from ddpm.diffusion.processes import VPProcess
from ddpm.diffusion.process_sampler import ODESampler, vp_denoise_fn
from ddpm.errors import ConfigError
from support.oracles import GaussianMixturePosteriorMean

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: a second thread only adds contention

WEIGHTS, MEANS, STDS = [0.7, 0.3], [[-1.0, 0.5], [1.5, -0.5]], [0.3, 0.2]


def schedule():
    return schedules.linear(num_timesteps=1000)


class ExactNet(nn.Module):
    """A VP net at float timesteps: the exact eps (or x0) of the mixture, or of one component given a label
    (label K: the whole mixture, the null class), through VPProcess's continuous path."""

    def __init__(self, process: VPProcess, prediction: str = "epsilon"):
        super().__init__()
        self.process, self.prediction = process, prediction
        self.mixture = GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS)
        self.components = [GaussianMixturePosteriorMean(process, [1.0], [m], [s]) for m, s in zip(MEANS, STDS)]

    def forward(self, x, t, cond=None):
        x0 = self.mixture(x, t)
        if cond is not None:
            for k, component in enumerate(self.components):
                x0 = torch.where((cond == k)[:, None], component(x, t), x0)
        return x0 if self.prediction == "x0" else self.process.eps_of(x, x0, t)


def draw(sampler, denoiser, n=4000, cond=None, seed=0):
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sampler(denoiser, denoiser_schedule(denoiser), x_T, torch.Generator().manual_seed(1), cond)


def denoiser_schedule(denoiser):
    return (denoiser.denoiser if isinstance(denoiser, ClassifierFreeGuidance) else denoiser).schedule


@pytest.mark.parametrize("solver, steps, prediction", [("heun", 18, "epsilon"), ("heun", 18, "x0"), ("euler", 100, "epsilon")])
def test_the_vp_ode_samplers_reproduce_a_gaussian_mixture_with_its_exact_denoiser(solver, steps, prediction):
    sched = schedule()
    denoiser = Denoiser(ExactNet(VPProcess(sched), prediction), sched, prediction, clip_denoised=False)
    x = draw(ODESampler(solver, steps), denoiser)
    mode = (x[:, 0] > 0.25).long()  # the modes lie at x = -1 and 1.5
    n = len(x)
    for k, (w, m, s) in enumerate(zip(WEIGHTS, MEANS, STDS)):
        share, points = (mode == k).double().mean().item(), x[mode == k]
        assert abs(share - w) <= 5 * math.sqrt(w * (1 - w) / n), (k, share)  # binomial standard errors
        for d in range(2):
            assert abs(points[:, d].mean().item() - m[d]) <= 5 * s / math.sqrt(len(points)), (k, d)
            assert abs(points[:, d].std().item() - s) <= 5 * s / math.sqrt(2 * len(points)) + 0.01, (k, d)


def test_the_bridge_equals_the_continuous_sampler_on_the_exact_denoiser():
    sched = schedule()
    process = VPProcess(sched)
    denoiser = Denoiser(ExactNet(process), sched, "epsilon", clip_denoised=False)
    ours = draw(ODESampler("heun", 10), denoiser, n=64)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direct = HeunSampler(steps=10)(GaussianMixturePosteriorMean(process, WEIGHTS, MEANS, STDS), process, x_T)
    # eps -> x0 through the path is exact; the Denoiser hands the net's output on in float32, as in training
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)


def test_guidance_at_float_timesteps_is_the_eps_formula_on_two_separate_calls():
    sched = schedule()
    process = VPProcess(sched)
    base = Denoiser(ExactNet(process), sched, "epsilon", clip_denoised=False)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([3.5, 100.25, 500.0, 700.7, 998.9, 40.0], dtype=torch.float64)
    # the net's output passes the Denoiser in float32; x0 = (x_t - sigma eps) / alpha amplifies that rounding by
    # 1 / alpha (150 at t = 999), so x0 is compared scaled back by alpha (the error of alpha x0 is sigma's times eps's)
    a = process.alpha(t)[:, None]
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    net = ExactNet(process)
    eps_c, eps_u = net(x, t, labels), net(x, t, torch.full_like(labels, 2))  # two separate calls
    for scale in (1.0, 2.5):
        guided = ClassifierFreeGuidance(base, num_classes=2, scale=scale)
        x0 = vp_denoise_fn(guided, process)(x, t, labels)
        want = process.x0_of(x, eps_u + scale * (eps_c - eps_u), t)  # float64
        torch.testing.assert_close(a * x0, a * want, rtol=1e-5, atol=1e-6)
    unconditional = vp_denoise_fn(ClassifierFreeGuidance(base, num_classes=2, scale=3.0), process)(x, t, None)
    torch.testing.assert_close(a * unconditional, a * process.x0_of(x, eps_u, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver, steps, nfe", [("heun", 18, 35), ("heun", 5, 9), ("euler", 35, 35)])
def test_the_reported_steps_are_the_network_evaluations(solver, steps, nfe):
    sched = schedule()
    calls = []
    net = ExactNet(VPProcess(sched))
    denoiser = Denoiser(lambda x, t, cond=None: calls.append(t[0].item()) or net(x, t, cond), sched, "epsilon",
                        clip_denoised=False)
    sampler = ODESampler(solver, steps)
    draw(sampler, denoiser, n=4)
    assert len(calls) == sampler.nfe() == nfe and calls == pytest.approx(sampler.timesteps(sched))
    assert calls[0] == pytest.approx(999.0)  # it starts at the last timestep


def test_an_unknown_solver_is_one_line():
    with pytest.raises(ConfigError, match="sampler.solver='rk4' is not allowed") as err:
        ODESampler("rk4")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [["sampler=heun", "sampler.steps=3"], ["experiment=digits_cfg", "sampler=euler", "sampler.steps=4"]])
def test_a_module_samples_with_sampler_heun_or_euler_from_the_config(overrides, tmp_path):
    from ddpm.runs.build import build_module
    from support.runs import TINY, compose_train

    module = build_module(compose_train(*TINY, *overrides, tmp_path=tmp_path))
    cond = torch.tensor([3, 7]) if module.conditional else None
    draw = lambda: module.sample(2, torch.Generator().manual_seed(0), cond=cond)  # noqa: E731
    images = draw()
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1 and torch.equal(images, draw())
