"""The Denoiser: from any network output to (x0_hat, eps_hat, log sigma_t^2), with clipping and
variance configured once. Checked against float64 formulas derived here from the betas."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.timesteps import timestep_sequence
from ddpm.errors import ConfigError

T = 100


@pytest.fixture(scope="module")
def sched():
    return schedules.linear(num_timesteps=T)


def float64_abar(T: int):
    betas = schedules.linear_betas(T, 1e-4, 0.02)  # float64, the schedule's own betas
    return betas, torch.cumprod(1 - betas, 0)


class TargetNet(nn.Module):
    """Outputs the exact regression target of ``prediction_type`` for fixed (x0, eps), as the net should."""

    def __init__(self, sched, x0, eps, prediction_type):
        super().__init__()
        self.sched, self.x0, self.eps, self.kind = sched, x0, eps, prediction_type
        self.conds = []

    def forward(self, x_t, t, cond=None):
        self.conds.append(cond)
        ab = self.sched.alphas_cumprod[t].view(-1, 1).double()
        x0, eps = self.x0.double(), self.eps.double()
        out = {"epsilon": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[self.kind]
        return out.float()


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_every_parameterization_gives_back_the_x0_and_eps_that_made_x_t(sched, prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(64, 3, generator=g) * 1.6 - 0.8, torch.randn(64, 3, generator=g)
    t = torch.randint(0, T, (64,), generator=g)
    x_t = sched.q_sample(x0, t, eps)
    out = Denoiser(TargetNet(sched, x0, eps, prediction_type), sched, prediction_type, clip_denoised=False)(x_t, t)
    # x0 from eps divides by sqrt(abar_t) ~ 1: errors of a few float32 ulps; eps from x0 divides by
    # sqrt(1 - abar_t), which is 0.01 at t = 0: up to ~1e-4 there.
    assert torch.allclose(out.x0, x0, atol=1e-4) and torch.allclose(out.eps, eps, atol=2e-3)


def test_clipping_bounds_x0_and_keeps_eps_consistent_with_x_t(sched):
    x0 = torch.tensor([[3.0, -2.5, 0.5]]).expand(8, 3)
    eps = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0, T - 1, 8).long()
    x_t = sched.q_sample(x0, t, eps)
    clipped = Denoiser(TargetNet(sched, x0, eps, "x0"), sched, "x0", clip_denoised=True)(x_t, t)
    assert torch.equal(clipped.x0, x0.clamp(-1, 1))
    ab = sched.alphas_cumprod[t].view(-1, 1)
    # float32 buffers: eps_hat ~ 200 at t = 0, so the round trip is good to ~1e-5 relative of that
    assert torch.allclose(ab.sqrt() * clipped.x0 + (1 - ab).sqrt() * clipped.eps, x_t, atol=2e-4)
    raw = Denoiser(TargetNet(sched, x0, eps, "x0"), sched, "x0", clip_denoised=False)(x_t, t)
    assert torch.equal(raw.x0, x0)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_reverse_log_variance_is_the_float64_formula_at_every_t(sched, variance):
    betas, abar = float64_abar(T)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)  # DDPM Eq. 7; beta~_0 = 0
    # t = 0 takes beta~_1 in both, as log 0 = -inf (improved-diffusion)
    expected = torch.cat([beta_tilde[1:2], (beta_tilde if variance == "fixed_small" else betas)[1:]]).log()
    t = torch.arange(T)
    net = TargetNet(sched, torch.zeros(T, 1), torch.zeros(T, 1), "epsilon")
    got = Denoiser(net, sched, variance=variance)(torch.zeros(T, 1), t).log_variance
    assert got.shape == (T, 1)
    assert torch.allclose(got.squeeze(1).double(), expected, rtol=0, atol=1e-6)


def test_the_condition_reaches_the_network_and_none_is_not_passed(sched):
    net = TargetNet(sched, torch.zeros(2, 1), torch.zeros(2, 1), "epsilon")
    denoiser = Denoiser(net, sched)
    denoiser(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    denoiser(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), cond="label")
    assert net.conds == [None, "label"]


def test_replace_changes_one_option_and_leaves_the_original(sched):
    denoiser = Denoiser(nn.Identity(), sched)
    other = denoiser.replace(clip_denoised=False, variance="fixed_large")
    assert (denoiser.clip_denoised, denoiser.variance) == (True, "fixed_small")
    assert (other.clip_denoised, other.variance, other.net) == (False, "fixed_large", denoiser.net)
    with pytest.raises(Exception):
        denoiser.variance = "fixed_large"  # frozen: one object, configured once


@pytest.mark.parametrize("options, named", [
    ({"prediction_type": "score"}, "prediction_type='score'"),
    ({"variance": "learned"}, "variance='learned'"),
    ({"clip_denoised": "yes"}, "clip_denoised='yes'"),
])
def test_bad_options_are_named(sched, options, named):
    with pytest.raises(ConfigError, match=named):
        Denoiser(nn.Identity(), sched, **options)


def test_host_abar_is_the_float64_product_not_the_float32_buffer(sched):
    _, abar = float64_abar(T)
    assert [sched.abar(t) for t in range(T)] == abar.tolist() and sched.abar(-1) == 1.0
    # 1 - abar_0 = beta_0 = 1e-4: float64 keeps it to rounding, the float32 buffer only to ~1e-4 relative
    assert (1 - sched.abar(0)) / 1e-4 - 1 == pytest.approx(0, abs=1e-11)
    assert abs((1 - sched.alphas_cumprod[0].double().item()) / 1e-4 - 1) > 1e-6


def test_trailing_spacing_is_round_half_even_of_the_exact_stride_for_every_number_of_steps():
    # round(T - i T/S) - 1 with T - i T/S = (T S - i T) / S as an exact fraction (Python rounds
    # Fractions half to even), against diffusers' trailing wherever the exact value is not a tie.
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    sched = schedules.linear(num_timesteps=T)
    reference = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ties = 0
    for steps in range(1, T + 1):
        exact = [Fraction(T * steps - i * T, steps) for i in range(steps)]
        got = timestep_sequence(sched, steps, "trailing")
        assert got == [round(x) - 1 for x in exact], steps
        reference.set_timesteps(steps)
        theirs = reference.timesteps.tolist()
        at_tie = [x.denominator == 2 for x in exact]
        ties += any(at_tie)
        assert all(a == b for a, b, tie in zip(got, theirs, at_tie) if not tie), steps
    assert ties > 0  # the rule matters: some S put a point exactly half-way


def test_trailing_rounds_before_subtracting_one():
    # round(T - i T/S) - 1, not round(T - i T/S - 1): they differ at ties (round half to even).
    # T = 1000, S = 16, i = 1: T - T/S = 937.5 -> round 938 - 1 = 937 (round(936.5) would give 936).
    sched = schedules.linear(num_timesteps=1000)
    assert timestep_sequence(sched, 16, "trailing")[1] == 937
