"""Classifier-free guidance (s = 1 + w): exact at s = 1 and s = 0, the formula against a float64
computation derived here for eps, x0 and v nets, one network call per step, the interval and the
rescale of Lin et al. 2024 against hand computations."""

import numpy as np
import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm.errors import ConfigError
from ddpm.nets.mlp import MLPDenoiser

T, K, B = 50, 3, 6
KINDS = ["epsilon", "x0", "v"]


@pytest.fixture(scope="module")
def sched():
    return schedules.linear(num_timesteps=T)


class Counting(nn.Module):
    """A conditional MLP (random weights, so labels matter) that counts its calls and their batch sizes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLPDenoiser(dim=4, hidden=32, layers=2, num_classes=K)
        for p in self.net.parameters():
            nn.init.normal_(p, std=0.3)
        self.num_classes, self.batches = K, []

    def forward(self, x, t, cond=None):
        self.batches.append(len(x))
        return self.net(x, t, cond)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, generator=g), torch.randint(0, T, (B,), generator=g), torch.randint(0, K, (B,), generator=g)


def guided(sched, kind, clip=False, **options):
    return ClassifierFreeGuidance(Denoiser(Counting(), sched, kind, clip_denoised=clip), K, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_one_is_the_conditional_model_and_zero_the_unconditional_one_exactly(sched, kind):
    x, t, y = inputs()
    for clip in (False, True):
        g1, g0 = guided(sched, kind, clip, scale=1.0), guided(sched, kind, clip, scale=0.0)
        for got, want in ((g1(x, t, y), g1.denoiser(x, t, y)), (g0(x, t, y), g0.denoiser(x, t, None))):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    null = torch.full((B,), K)
    assert torch.equal(g0.denoiser(x, t, None).eps, g0.denoiser(x, t, null).eps)  # None is the null class


def float64_guided(sched, kind, out_c, out_u, x, t, s, clip, phi=0.0):
    """eps_u + s (eps_c - eps_u) from the raw outputs, in float64 with abar from the float64 betas."""
    abar = torch.cumprod(1 - schedules.linear_betas(T, 1e-4, 0.02), 0)[t].view(-1, 1)  # float64
    a, b, x = abar.sqrt(), (1 - abar).sqrt(), x.double()

    def eps_of(out):  # x_t = a x0 + b eps; v = a eps - b x0
        out = out.double()
        return {"epsilon": out, "x0": (x - a * out) / b, "v": a * out + b * x}[kind]

    eps_c, eps_u = eps_of(out_c), eps_of(out_u)
    eps = eps_u + s * (eps_c - eps_u)
    if phi:
        std_c = torch.from_numpy(np.std(eps_c.numpy(), axis=1, ddof=1, keepdims=True))
        std = torch.from_numpy(np.std(eps.numpy(), axis=1, ddof=1, keepdims=True))
        eps = phi * eps * std_c / std + (1 - phi) * eps
    x0 = (x - b * eps) / a
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - a * x0) / b
    return x0, eps


@pytest.mark.parametrize("kind", KINDS)
def test_guided_prediction_is_the_formula_on_eps_for_every_parameterization(sched, kind):
    x, t, y = inputs(1)
    for s, clip, phi in ((3.0, False, 0.0), (2.5, True, 0.0), (4.0, False, 0.7), (0.5, True, 1.0)):
        g = guided(sched, kind, clip, scale=s, rescale=phi)
        out = g(x, t, y)
        net = g.denoiser.net
        with torch.no_grad():
            out_c, out_u = net(x, t, y), net(x, t, torch.full((B,), K))
        x0, eps = float64_guided(sched, kind, out_c, out_u, x, t, s, clip, phi)
        assert torch.allclose(out.x0.double(), x0, atol=2e-4, rtol=1e-4), (s, clip, phi)
        assert torch.allclose(out.eps.double(), eps, atol=2e-3, rtol=1e-3), (s, clip, phi)
        assert torch.equal(out.log_variance, g.denoiser(x, t, y).log_variance)


def test_rescale_one_gives_each_sample_the_std_of_the_conditional_eps(sched):
    x, t, y = inputs(2)
    g = guided(sched, "epsilon", scale=5.0, rescale=1.0)
    eps = g(x, t, y).eps
    eps_c = g.denoiser(x, t, y).eps
    assert torch.allclose(eps.std(dim=1), eps_c.std(dim=1), rtol=1e-4)
    assert not torch.allclose(eps, eps_c, atol=1e-2)  # the direction is still the guided one


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(steps=7), DPMSolverSampler(steps=6)],
                         ids=lambda s: s.name)
def test_both_halves_come_from_one_network_call_per_sampler_step(sched, sampler):
    g = guided(sched, "epsilon", scale=3.0)
    x_T = torch.randn(B, 4, generator=torch.Generator().manual_seed(3))
    _, _, y = inputs()
    out = sampler(g, sched, x_T, torch.Generator().manual_seed(4), y)
    assert torch.isfinite(out).all()
    assert g.denoiser.net.batches == [2 * B] * len(sampler.timesteps(sched))


def test_interval_guides_inside_and_samples_the_conditional_model_outside(sched):
    x, _, y = inputs(5)
    g = guided(sched, "v", scale=4.0, interval=(10, 20))
    full = guided(sched, "v", scale=4.0)
    for t_int, inside in ((9, False), (10, True), (20, True), (21, False)):
        t = torch.full((B,), t_int)
        want = full(x, t, y) if inside else g.denoiser(x, t, y)
        assert all(torch.equal(a, b) for a, b in zip(g(x, t, y), want)), t_int
    # per-sample timesteps: s = 4 inside, 1 outside, each sample by the formula
    t = torch.tensor([5, 10, 15, 20, 25, 40])
    net = g.denoiser.net
    s = torch.tensor([1.0, 4, 4, 4, 1, 1]).view(-1, 1).double()
    with torch.no_grad():
        out_c, out_u = net(x, t, y), net(x, t, torch.full((B,), K))
    x0, eps = float64_guided(sched, "v", out_c, out_u, x, t, s, clip=False)
    assert torch.allclose(g(x, t, y).eps.double(), eps, atol=2e-3, rtol=1e-3)


def test_no_labels_is_the_unconditional_model(sched):
    x, t, _ = inputs()
    g = guided(sched, "epsilon", scale=3.0)
    assert torch.equal(g(x, t, None).eps, g.denoiser(x, t, None).eps)


@pytest.mark.parametrize("options, match", [
    (dict(scale=-1.0), "scale=-1.0"), (dict(scale=float("nan")), "scale=nan"),
    (dict(interval=(20, 10)), r"interval=\[20, 10\]"), (dict(interval=(1.5, 3)), "interval"),
    (dict(rescale=1.5), "rescale=1.5"),
])
def test_bad_guidance_options_are_one_line(sched, options, match):
    with pytest.raises(ConfigError, match=match) as e:
        guided(sched, "epsilon", **options)
    assert "\n" not in str(e.value)


def test_guided_samples_of_a_briefly_trained_gaussians8_model_land_on_the_requested_mode():
    """120 steps of the conditional MLP on gaussians8 (the class is the mode), sampled with DDIM-20:
    unguided (s = 0) samples are spread over the 8 modes, guided ones (s = 3) land on the requested one."""
    import math

    from ddpm.data.points import gaussians8
    from ddpm.diffusion.losses import SimpleLoss
    from ddpm.evaluation.sampling import balanced_labels
    from ddpm.training.module import DiffusionModule

    torch.manual_seed(0)
    module = DiffusionModule(MLPDenoiser(num_classes=8), schedules.cosine(num_timesteps=100), Denoiser, SimpleLoss(),
                             DDIMSampler(steps=20), None, sample_shape=(2,), compile=None)
    points, modes = gaussians8(4096, torch.Generator().manual_seed(0), with_labels=True)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=3e-3)
    module._noise, g = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(120):
        i = torch.randint(0, len(points), (256,), generator=g)
        loss = module.compute_loss((points[i], modes[i]))[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    angle = torch.arange(8) * math.pi / 4
    centres = 0.8 * torch.stack([angle.cos(), angle.sin()], 1)  # (8, 2), the modes
    labels = balanced_labels(800, 8)
    hits = {}
    for s in (0.0, 3.0):
        x = module.sample(800, torch.Generator().manual_seed(0), use_ema=False, cond=labels, guidance_scale=s)
        hits[s] = (torch.cdist(x, centres).argmin(1) == labels).float().mean().item()
    assert hits[3.0] >= 0.99 and hits[0.0] < 0.3, hits
