"""ddpm.diffusion.continuous_losses: EDMLoss against k-diffusion's ``layers.Denoiser.loss`` on the same net, noise and
sigma (drawn by hand from the same seeded generator, t first, then eps); the same loss on the flow path; the flow
matching loss against its formula by hand and 0 for an oracle net; the drawn times' distribution; bad input."""

import math

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.continuous_losses import EDMLoss, FlowMatchingLoss
from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess
from ddpm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

B, SHAPE = 16, (2, 4, 4)


def conv_net(seed: int, dtype=torch.float64) -> nn.Module:
    """A fixed F(x (B, 2, 4, 4), c_noise (B,)) -> x's shape: a conv with a c_noise-dependent bias."""
    torch.manual_seed(seed)
    conv, bias = nn.Conv2d(2, 2, 3, padding=1).to(dtype), nn.Linear(1, 2).to(dtype)
    return lambda x, c, cond=None: torch.tanh(conv(x)) + bias(c.to(x.dtype).view(-1, 1)).view(-1, 2, 1, 1)


def data(dtype=torch.float64):
    return 0.5 * torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(100), dtype=dtype)


def test_edm_loss_is_k_diffusions_loss():
    from k_diffusion.layers import Denoiser as KDenoiser

    F, x0 = conv_net(0), data()
    loss, t = EDMLoss()(ContinuousDenoiser(F, EDMProcess(), "edm"), x0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # by hand: ln sigma ~ N(-1.2, 1.2^2) first, then eps
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(B, generator=g)).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    inner = lambda x, s: F(x, torch.log(s) / 4)  # noqa: E731
    want = KDenoiser(inner, sigma_data=0.5).loss(x0, noise, sigma)
    assert torch.equal(t, sigma)
    assert loss.shape == (B,) and (loss - want).abs().max().item() < 1e-12
    # and in float32 (training's dtype; eps drawn in float32): to float32 rounding
    loss32, _ = EDMLoss()(ContinuousDenoiser(conv_net(0, torch.float32), EDMProcess(), "edm"), x0.float(),
                          torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(B, generator=g)).double()
    noise = torch.randn(x0.shape, generator=g).double()
    want = KDenoiser(inner, sigma_data=0.5).loss(x0.float().double(), noise, sigma)
    assert loss32.dtype == torch.float32 and ((loss32.double() - want).abs() / want).max().item() < 1e-5


def test_edm_loss_by_hand_with_its_options():
    """lambda(nu) mean((D - x0)^2) with p_mean, p_std and sigma_data changed, D from ContinuousDenoiser."""
    F, x0 = conv_net(1), data()
    denoiser = ContinuousDenoiser(F, EDMProcess(sigma_data=1.0), "edm")
    loss, t = EDMLoss(p_mean=0.5, p_std=0.3)(denoiser, x0, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    nu = torch.exp(0.5 + 0.3 * torch.randn(B, generator=g)).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    n = nu.view(-1, 1, 1, 1)
    x = x0 + n * eps
    d = x / (n**2 + 1) + n / torch.sqrt(n**2 + 1) * F(x / torch.sqrt(n**2 + 1), torch.log(nu) / 4)  # sd = 1
    want = (n.flatten() ** 2 + 1) / n.flatten() ** 2 * ((d - x0) ** 2).flatten(1).mean(1)
    assert torch.equal(t, nu) and (loss - want).abs().max().item() < 1e-12


def test_edm_loss_on_the_flow_path_is_the_same_loss():
    F, x0 = conv_net(2), data()
    on_edm, nu = EDMLoss()(ContinuousDenoiser(F, EDMProcess(), "edm"), x0, torch.Generator().manual_seed(3))
    on_flow, t = EDMLoss()(ContinuousDenoiser(F, FlowProcess(), "edm"), x0, torch.Generator().manual_seed(3))
    assert (t - nu / (1 + nu)).abs().max().item() < 1e-15
    assert ((on_flow - on_edm).abs() / on_edm).max().item() < 1e-10


@pytest.mark.parametrize("time,shift", [("logit_normal", 1.0), ("uniform", 1.0), ("logit_normal", 3.0)])
def test_flow_matching_loss_by_hand(time, shift):
    F, x0 = conv_net(3), data()
    loss, t = FlowMatchingLoss(time=time, m=0.2, s=0.8, shift=shift)(
        ContinuousDenoiser(F, FlowProcess(), "velocity"), x0, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # by hand: t first (SD3's sigmoid(m + s z), or U[0, 1)), then eps
    want_t = torch.sigmoid(0.2 + 0.8 * torch.randn(B, generator=g)) if time == "logit_normal" else torch.rand(B, generator=g)
    want_t = (shift * want_t / (1 + (shift - 1) * want_t)).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    tt = want_t.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    want = ((F(x_t, 1000 * want_t) - (eps - x0)) ** 2).flatten(1).mean(1)
    assert (t - want_t).abs().max().item() < 1e-15 and (loss - want).abs().max().item() < 1e-12


def test_flow_matching_loss_of_the_oracle_net_is_zero():
    x0 = data()
    g = torch.Generator().manual_seed(5)  # the oracle redraws the loss's t and eps from a twin generator
    t = torch.sigmoid(torch.randn(B, generator=g)).double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    oracle = lambda x, c, cond=None: eps - x0  # noqa: E731
    for prediction in ("velocity", "edm"):  # edm: a net whose F gives the true u through the x0_hat, eps_hat
        if prediction == "edm":
            tt, sd = t.view(-1, 1, 1, 1), 0.5
            x = ((1 - tt) * x0 + tt * eps) / (1 - tt)
            n = tt / (1 - tt)
            target = (x0 - sd**2 / (n**2 + sd**2) * x) / (n * sd / torch.sqrt(n**2 + sd**2))
            oracle = lambda x, c, cond=None: target  # noqa: E731
        loss, drawn = FlowMatchingLoss()(ContinuousDenoiser(oracle, FlowProcess(), prediction), x0,
                                         torch.Generator().manual_seed(5))
        assert torch.equal(drawn, t) and loss.abs().max().item() < 1e-24


def test_drawn_times_follow_their_distributions():
    """EDM's ln nu: mean -1.2, std 1.2; flow's logit t: mean m, std s; uniform: mean 1/2 (2^14 draws, 5 std errors)."""
    n, x0 = 2**14, torch.zeros(2**14, 1)
    ident = lambda x, c, cond=None: x  # noqa: E731
    _, nu = EDMLoss()(ContinuousDenoiser(ident, EDMProcess(), "edm"), x0, torch.Generator().manual_seed(6))
    assert abs(nu.log().mean() + 1.2) < 5 * 1.2 / math.sqrt(n) and abs(nu.log().std() - 1.2) < 5 * 1.2 / math.sqrt(2 * n)
    _, t = FlowMatchingLoss(m=0.5, s=0.7)(ContinuousDenoiser(ident, FlowProcess(), "velocity"), x0,
                                           torch.Generator().manual_seed(7))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 5 * 0.7 / math.sqrt(n) and abs(logit.std() - 0.7) < 5 * 0.7 / math.sqrt(2 * n)
    _, t = FlowMatchingLoss(time="uniform")(ContinuousDenoiser(ident, FlowProcess(), "velocity"), x0,
                                            torch.Generator().manual_seed(8))
    assert 0 <= t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 5 / math.sqrt(12 * n)


@pytest.mark.parametrize("make,match", [
    (lambda: EDMLoss(p_std=0), "loss.p_std=0 is not allowed"),
    (lambda: EDMLoss(p_mean="a"), "loss.p_mean='a' is not allowed"),
    (lambda: FlowMatchingLoss(time="beta"), "loss.time='beta' is not allowed"),
    (lambda: FlowMatchingLoss(s=-1), "loss.s=-1 is not allowed"),
    (lambda: FlowMatchingLoss(shift=0.0), "loss.shift=0.0 is not allowed"),
    (lambda: EDMLoss()(ContinuousDenoiser(conv_net(0), VPProcess(schedules.linear(num_timesteps=10)), "edm"), data()),
     "loss=edm needs noise levels in \\(0, inf\\): use it with process=edm or process=flow, not process=vp"),
    (lambda: FlowMatchingLoss()(ContinuousDenoiser(conv_net(0), EDMProcess(), "velocity"), data()),
     "loss=flow_matching draws t in \\[0, 1\\], the flow path's time: use it with process=flow, not process=edm"),
])
def test_bad_options_are_one_line(make, match):
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert "\n" not in str(info.value)
