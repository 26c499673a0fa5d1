"""Forward process, posterior, prediction conversions and the simple loss."""

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.diffusion.parameterization import PREDICTIONS, get_prediction
from ddpm.errors import ConfigError


@pytest.fixture
def sched():
    return schedules.linear()


def test_q_sample_has_the_closed_form_mean_and_variance(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    t = torch.full((200_000,), 300)
    x_t = sched.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    abar = torch.cumprod(1 - schedules.linear_betas(1000, 1e-4, 0.02), 0)[300].item()
    assert x_t.mean().item() == pytest.approx(abar**0.5 * 0.7, abs=5e-3)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=1e-2)


def test_posterior_matches_bayes_rule_for_gaussians(sched):
    # q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of two Gaussians in x_{t-1}, in float64.
    betas = schedules.linear_betas(1000, 1e-4, 0.02)
    abar = torch.cumprod(1 - betas, 0)
    x0, x_t = torch.tensor([[0.3], [-0.8]]), torch.tensor([[1.1], [0.2]])
    for t_int in (1, 17, 500, 999):
        a_t, ab_prev = 1 - betas[t_int], abar[t_int - 1]
        # likelihood in x_{t-1}: x_t ~ N(sqrt(a_t) x_{t-1}, beta_t) -> precision a_t / beta_t, mean x_t / sqrt(a_t)
        prec = a_t / betas[t_int] + 1 / (1 - ab_prev)
        mean = (a_t.sqrt() * x_t.double() / betas[t_int] + ab_prev.sqrt() * x0.double() / (1 - ab_prev)) / prec
        t = torch.full((2,), t_int)
        got_mean, got_var, got_logvar = sched.posterior(x0, x_t, t)
        assert torch.allclose(got_mean.double(), mean, rtol=1e-4, atol=1e-6)
        assert torch.allclose(got_var.double().flatten(), (1 / prec).expand(2), rtol=1e-4)
        assert torch.allclose(got_logvar.double().flatten(), (1 / prec).log().expand(2), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(PREDICTIONS))
def test_prediction_conversions_round_trip_to_x0_and_eps(sched, name):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 900, 999])
    x_t = sched.q_sample(x0, t, eps)
    prediction = get_prediction(name)
    out = prediction.target(sched, x0, eps, t)
    got_x0, got_eps = prediction.to_x0_eps(sched, out, x_t, t)
    # x0 from eps divides by sqrt(abar) ~ 6e-3 at t=999, so float32 error grows there.
    assert torch.allclose(got_x0, x0, atol=2e-3)
    assert torch.allclose(got_eps, eps, atol=2e-3)


def test_v_target_is_the_rotation_of_eps_and_x0(sched):
    x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([5, 50, 500, 950])
    ab = torch.cumprod(1 - schedules.linear_betas(1000, 1e-4, 0.02), 0)[t].unsqueeze(1).float()
    assert torch.allclose(sched.v_target(x0, t, eps), ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-6)


class OracleNet(torch.nn.Module):
    """Returns the true target for a fixed x0 by inverting q_sample; exact for one data point."""

    def __init__(self, sched, x0, prediction):
        super().__init__()
        self.sched, self.x0, self.prediction = sched, x0, prediction

    def forward(self, x_t, t):
        eps = self.sched.eps_from_x0(x_t, t, self.x0.expand_as(x_t))
        return self.prediction.target(self.sched, self.x0.expand_as(x_t), eps, t)


@pytest.mark.parametrize("name", sorted(PREDICTIONS))
def test_loss_is_zero_when_the_network_returns_the_true_target(sched, name):
    x0 = torch.full((16, 1, 2, 2), 0.25)
    denoiser = Denoiser(OracleNet(sched, x0[:1], get_prediction(name)), sched, prediction_type=name)
    per_sample, t = SimpleLoss(min_snr_gamma=5.0)(denoiser, x0, torch.Generator().manual_seed(0))
    assert per_sample.shape == (16,) and t.shape == (16,)
    assert per_sample.max().item() < 1e-6


class ZeroNet(torch.nn.Module):
    def forward(self, x_t, t):
        return torch.zeros_like(x_t)


def test_loss_of_a_zero_network_on_eps_is_the_noise_variance(sched):
    zero = Denoiser(ZeroNet(), sched, prediction_type="epsilon")
    per_sample, _ = SimpleLoss()(zero, torch.zeros(256, 1, 8, 8), torch.Generator().manual_seed(0))
    assert per_sample.mean().item() == pytest.approx(1.0, rel=0.02)


def test_min_snr_weight_for_eps_is_min_snr_gamma_over_snr(sched):
    zero = Denoiser(ZeroNet(), sched, prediction_type="epsilon")
    x0 = torch.zeros(64, 1, 4, 4)
    plain, t = SimpleLoss()(zero, x0, torch.Generator().manual_seed(3))
    weighted, t2 = SimpleLoss(min_snr_gamma=5.0)(zero, x0, torch.Generator().manual_seed(3))
    snr = sched.snr[t]
    assert torch.equal(t, t2)
    assert torch.allclose(weighted, plain * torch.clamp(snr, max=5.0) / snr)


def test_loss_stays_float32_under_bf16_autocast(sched):
    class Conv(torch.nn.Conv2d):
        def forward(self, x_t, t):
            return super().forward(x_t)

    net = Conv(1, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.zeros(1, 1, 4, 4), None).dtype == torch.bfloat16  # the network does run in bf16
        per_sample, _ = SimpleLoss()(Denoiser(net, sched), torch.zeros(4, 1, 4, 4))
    assert per_sample.dtype == torch.float32


def test_unknown_prediction_type_is_named():
    with pytest.raises(ConfigError, match="prediction_type='score'"):
        Denoiser(ZeroNet(), schedules.linear(num_timesteps=10), prediction_type="score")
