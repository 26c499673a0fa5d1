"""Learned reverse variance, the hybrid loss and respaced ancestral sampling (Nichol & Dhariwal 2021,
"Improved Denoising Diffusion Probabilistic Models"), checked against float64 formulas derived here."""

import math

import pytest
import torch
from torch import nn
from torch.special import ndtr

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.losses import HybridLoss, SimpleLoss, VLBLoss
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm.errors import ConfigError, root_config_error
from ddpm.nets.mlp import MLPDenoiser
from ddpm.nets.unet import UNet

T = 10


@pytest.fixture(scope="module")
def sched():
    return schedules.linear(num_timesteps=T, beta_start=1e-3, beta_end=0.2)


def float64_schedule(T: int = T):
    """betas, abar, beta~ (beta~_0 replaced by beta~_1) in float64, from DDPM Eq. 7."""
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    return betas, abar, torch.cat([beta_tilde[1:2], beta_tilde[1:]])


class ConstantNet(nn.Module):
    """Outputs eps = 0 in the first C channels and a constant v in the second C (2C channels)."""

    def __init__(self, v: float):
        super().__init__()
        self.v = v

    def forward(self, x, t, cond=None):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.v)], dim=1)


class SplitNet(nn.Module):
    """A 2C-channel net whose mean channels depend only on ``mean_w`` and variance channels only on ``var_w``."""

    def __init__(self, channels: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.mean_w = nn.Parameter(0.3 * torch.randn(channels, generator=g))
        self.var_w = nn.Parameter(0.5 * torch.randn(channels, generator=g))

    def forward(self, x, t, cond=None):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        time = (t.float() / T).view(-1, *([1] * (x.ndim - 1)))
        return torch.cat([self.mean_w.view(shape) * x * (1 + time), torch.tanh(self.var_w.view(shape) * (x + time))], 1)


@pytest.mark.parametrize("v", [-1.0, 1.0, 0.3])
def test_v_interpolates_log_beta_tilde_and_log_beta_per_element(sched, v):
    betas, _, beta_tilde = float64_schedule()
    w = (v + 1) / 2  # Nichol & Dhariwal Eq. 15 with the net's v in [-1, 1] mapped to [0, 1]
    expected = w * betas.log() + (1 - w) * beta_tilde.log()  # (T,)
    x = torch.zeros(T, 2, 3, 3)
    got = Denoiser(ConstantNet(v), sched, variance="learned_range")(x, torch.arange(T)).log_variance
    assert got.shape == (T, 2, 3, 3)  # one variance per element
    assert torch.allclose(got.double(), expected.view(T, 1, 1, 1).expand_as(got), rtol=0, atol=2e-6)


def independent_vb_bits(x0, x_t, t, x0_hat, log_var):
    """L_t in bits/dim (B,) from float64 formulas: the Gaussian KL for t > 0, the binned decoder at t = 0."""
    betas, abar, _ = float64_schedule()
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    view = lambda a: a[t].view(-1, 1, 1, 1)  # noqa: E731
    c1, c2 = view(betas * abar_prev.sqrt() / (1 - abar)), view((1 - abar_prev) * (1 - betas).sqrt() / (1 - abar))
    q_var = view(betas * (1 - abar_prev) / (1 - abar)).clamp(min=float(betas[1] * (1 - abar[0]) / (1 - abar[1])))
    x0, x_t, x0_hat, log_var = x0.double(), x_t.double(), x0_hat.double(), log_var.double()
    mu_q, mu_p, var_p = c1 * x0 + c2 * x_t, c1 * x0_hat + c2 * x_t, log_var.exp()
    kl = 0.5 * (log_var - q_var.log() + q_var / var_p + (mu_q - mu_p) ** 2 / var_p - 1)
    std, half = var_p.sqrt(), 1 / 255
    upper = torch.where(x0 > 1 - half, torch.ones_like(x0), ndtr((x0 + half - mu_p) / std))
    lower = torch.where(x0 < -1 + half, torch.zeros_like(x0), ndtr((x0 - half - mu_p) / std))
    nll = -(upper - lower).log()
    per_dim = torch.where(t.view(-1, 1, 1, 1) == 0, nll, kl).flatten(1).mean(1)
    return per_dim / math.log(2)


def pixels(B: int, seed: int = 0):
    return torch.randint(0, 256, (B, 1, 2, 2), generator=torch.Generator().manual_seed(seed)).float() / 127.5 - 1


def test_hybrid_loss_is_simple_plus_lambda_T_vb_and_vlb_loss_is_T_vb(sched):
    net, x0, lam = SplitNet(), pixels(64), 0.001
    denoiser = Denoiser(net, sched, variance="learned_range", clip_denoised=True)  # the vb term never clips
    loss, t = HybridLoss(lam)(denoiser, x0, torch.Generator().manual_seed(5))
    # the same draws, in the same order: t, then eps
    g = torch.Generator().manual_seed(5)
    t_ref = torch.randint(0, T, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    assert torch.equal(t, t_ref) and (t == 0).any() and (t > 0).any()
    _, abar, _ = float64_schedule()
    a = abar[t].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
    with torch.no_grad():
        out = net(x_t, t).double()
    eps_hat, v = out[:, :1], out[:, 1:]
    simple = (eps_hat - eps.double()).pow(2).flatten(1).mean(1)
    betas, _, beta_tilde = float64_schedule()
    log_var = (v + 1) / 2 * betas.log()[t].view(-1, 1, 1, 1) + (1 - v) / 2 * beta_tilde.log()[t].view(-1, 1, 1, 1)
    x0_hat = (x_t.double() - (1 - a).sqrt() * eps_hat) / a.sqrt()  # unclipped
    vb = independent_vb_bits(x0, x_t, t, x0_hat, log_var)
    assert torch.allclose(loss.double(), simple + lam * T * vb, rtol=1e-4, atol=1e-6)
    vlb, t2 = VLBLoss()(denoiser, x0, torch.Generator().manual_seed(5))
    assert torch.equal(t2, t) and torch.allclose(vlb.double(), T * vb, rtol=1e-4, atol=1e-6)


def test_the_stop_gradient_leaves_the_mean_with_the_gradient_of_l_simple(sched):
    net, x0 = SplitNet(), pixels(32, seed=1)
    loss, _ = HybridLoss(lambda_vlb=1.0)(Denoiser(net, sched, variance="learned_range"), x0, torch.Generator().manual_seed(2))
    mean_grad, var_grad = torch.autograd.grad(loss.mean(), [net.mean_w, net.var_w])

    class MeanOnly(nn.Module):  # the same net's mean channels, as a fixed-variance net
        def forward(self, x, t, cond=None):
            return net(x, t)[:, :1]

    simple, _ = SimpleLoss()(Denoiser(MeanOnly(), sched), x0, torch.Generator().manual_seed(2))
    (simple_grad,) = torch.autograd.grad(simple.mean(), [net.mean_w])
    assert torch.allclose(mean_grad, simple_grad, rtol=1e-6, atol=0) and simple_grad.abs().sum() > 0
    assert torch.isfinite(var_grad).all() and var_grad.abs().sum() > 0  # L_vlb trains the variance
    vlb, _ = VLBLoss()(Denoiser(net, sched, variance="learned_range"), x0, torch.Generator().manual_seed(2))
    assert torch.autograd.grad(vlb.mean(), [net.mean_w])[0].abs().sum() > 0  # without stop-gradient: the mean too


def test_respaced_schedule_keeps_abar_and_all_steps_are_the_original(sched):
    _, abar, _ = float64_schedule()
    kept = [9, 6, 3, 0]
    spaced = schedules.respace(sched, kept)
    assert torch.allclose(torch.tensor(spaced.alphas_cumprod_host, dtype=torch.float64), abar[[0, 3, 6, 9]], rtol=1e-12)
    full = schedules.respace(sched, list(range(T)))
    assert torch.allclose(full.betas, sched.betas, rtol=1e-6, atol=0)
    assert torch.allclose(full.posterior_variance, sched.posterior_variance, rtol=1e-5, atol=0)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_respaced_to_all_t_steps_samples_as_plain_ddpm(sched, variance):
    net = SplitNet(2) if variance == "learned_range" else MLPDenoiser(dim=2, hidden=16, layers=1)
    denoiser = Denoiser(net, sched, variance=variance, clip_denoised=False)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    plain = DDPMSampler()(denoiser, sched, x_T, torch.Generator().manual_seed(1))
    spaced = DDPMSampler(steps=T)(denoiser, sched, x_T, torch.Generator().manual_seed(1))
    assert torch.allclose(spaced, plain, rtol=0, atol=2e-5)


@pytest.mark.parametrize("variance,v,w", [("fixed_small", None, 0.0), ("fixed_large", None, 1.0),
                                          ("learned_range", -1.0, 0.0), ("learned_range", 1.0, 1.0),
                                          ("learned_range", 0.3, 0.65)])
def test_one_respaced_step_uses_betas_from_abar_and_the_variance_at_the_same_place(sched, variance, v, w):
    """Two kept steps [9, 0]: x_0' = mu~'(x0_hat, x_T) + sigma' z, then x0_hat at t = 0 (eps_hat = 0)."""
    net = ConstantNet(v) if v is not None else (lambda x, t, cond=None: torch.zeros_like(x))
    denoiser = Denoiser(net, sched, variance=variance, clip_denoised=False)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    got = DDPMSampler(steps=2)(denoiser, sched, x_T, torch.Generator().manual_seed(4))
    _, abar, _ = float64_schedule()
    a9, a0 = abar[9].item(), abar[0].item()
    beta = 1 - a9 / a0  # beta' of the respaced step 9 -> 0
    beta_tilde = beta * (1 - a0) / (1 - a9)
    x0_hat = x_T.double() / math.sqrt(a9)  # eps_hat = 0
    mean = beta * math.sqrt(a0) / (1 - a9) * x0_hat + (1 - a0) * math.sqrt(a9 / a0) / (1 - a9) * x_T.double()
    sigma = math.exp(0.5 * (w * math.log(beta) + (1 - w) * math.log(beta_tilde)))
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(4)).double()
    expected = (mean + sigma * z) / math.sqrt(a0)  # the last call: x0_hat at t = 0, no noise
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_learned_variance_net_runs_through_every_sampler_and_guidance(sched):
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, layers=1, num_classes=3, learn_sigma=True)
    denoiser = Denoiser(net, sched, variance="learned_range", clip_denoised=False)
    x_T, labels = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    guided = ClassifierFreeGuidance(denoiser, num_classes=3, scale=2.0)
    for sampler in (DDPMSampler(), DDPMSampler(steps=4), DDIMSampler(steps=4, eta=1.0), DPMSolverSampler(steps=4)):
        for d in (denoiser, guided):
            out = sampler(d, sched, x_T, torch.Generator().manual_seed(1), labels)
            assert out.shape == (6, 2) and torch.isfinite(out).all()
    t = torch.full((6,), 5)
    assert torch.equal(guided(x_T, t, labels).log_variance, denoiser(x_T, t, labels).log_variance)  # the conditional half's


def test_learn_sigma_doubles_the_output_channels_and_leaves_the_plain_nets_unchanged():
    kw = dict(image_size=8, in_channels=3, base_channels=32, channel_mult=[1], num_res_blocks=1, attn_resolutions=[])
    torch.manual_seed(0)
    plain = UNet(**kw)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), UNet(**kw, learn_sigma=False).state_dict().values()))
    learned = UNet(**kw, learn_sigma=True)
    shapes = {k: v.shape for k, v in learned.state_dict().items()}
    changed = {k for k, v in plain.state_dict().items() if shapes[k] != v.shape}
    assert shapes.keys() == plain.state_dict().keys() and changed == {"out.2.weight", "out.2.bias"}
    assert learned(torch.zeros(2, 3, 8, 8), torch.tensor([0, 5])).shape == (2, 6, 8, 8)
    assert MLPDenoiser(dim=2, hidden=8, layers=1, learn_sigma=True)(torch.zeros(4, 2), torch.zeros(4)).shape == (4, 4)


def test_bad_combinations_raise_one_line_naming_them(sched):
    mlp = dict(dim=2, hidden=8, layers=1)
    cases = [
        (lambda: Denoiser(MLPDenoiser(**mlp, learn_sigma=True), sched), "model.learn_sigma=true"),
        (lambda: Denoiser(MLPDenoiser(**mlp), sched, variance="learned_range"), "model.learn_sigma=false"),
        (lambda: Denoiser(lambda x, t: x, sched, variance="learned_range")(torch.zeros(2, 2), torch.zeros(2).long()),
         "2 output channels for 2-channel data"),
        (lambda: HybridLoss()(Denoiser(MLPDenoiser(**mlp), sched), torch.zeros(2, 2)), "loss=hybrid"),
        (lambda: SimpleLoss()(Denoiser(ConstantNet(0.0), sched, variance="learned_range"), torch.zeros(2, 2)), "loss=simple"),
        (lambda: DDPMSampler(steps=T + 1)(Denoiser(MLPDenoiser(**mlp), sched), sched, torch.zeros(2, 2)), f"steps={T + 1}"),
        (lambda: MLPDenoiser(**mlp, learn_sigma="yes"), "model.learn_sigma='yes'"),
        (lambda: HybridLoss(lambda_vlb=-1.0), "lambda_vlb=-1.0"),
    ]
    for make, named in cases:
        with pytest.raises(ConfigError) as err:
            make()
        assert named in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_with_the_other_learn_sigma_is_one_line_naming_the_output_layer():
    from ddpm.training.checkpoints import check_fits

    kw = dict(image_size=8, in_channels=1, base_channels=32, channel_mult=[1], num_res_blocks=1, attn_resolutions=[])
    for trained, loading in ((UNet(**kw), UNet(**kw, learn_sigma=True)), (MLPDenoiser(learn_sigma=True), MLPDenoiser())):
        with pytest.raises(ConfigError) as err:
            check_fits(nn.ModuleDict({"net": loading}), "run/last.ckpt", nn.ModuleDict({"net": trained}).state_dict())
        assert "net.out." in str(err.value) and "in the checkpoint but" in str(err.value) and "\n" not in str(err.value)


def test_the_hybrid_terms_are_logged_per_range_of_t_beside_the_loss(sched):
    from ddpm.training.loss_log import LossByTimestep

    loss_fn, log = HybridLoss(), LossByTimestep(buckets=2, num_timesteps=T)
    loss, t = loss_fn(Denoiser(SplitNet(), sched, variance="learned_range"), pixels(32), torch.Generator().manual_seed(0))
    log.add(loss.detach(), t, loss_fn.terms)
    means = log.means()
    low = t < T // 2
    for name, values in (("loss", loss.detach()), ("loss_mse", loss_fn.terms["mse"]), ("loss_vb", loss_fn.terms["vb"])):
        assert torch.allclose(means[f"train/{name}"], values.mean())
        assert torch.allclose(means[f"train/{name}_t0-4"], values[low].mean())
        assert torch.allclose(means[f"train/{name}_t5-9"], values[~low].mean())
    assert torch.allclose(loss, loss_fn.terms["mse"] + 0.001 * T * loss_fn.terms["vb"])


def test_importance_sampling_follows_eq_18_keeps_ten_values_per_t_and_stays_unbiased():
    from ddpm.diffusion.resample import LossSecondMomentSampler

    rs = LossSecondMomentSampler(4, history=10, uniform_prob=0.001)
    rs.update(torch.tensor([0, 1, 2] * 10), torch.ones(30))
    assert torch.equal(rs.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # t = 3 has no values yet
    values = {0: [5.0] * 2 + [1.0, 2.0] * 5, 1: [0.5] * 10, 2: [0.1] * 10, 3: [3.0] * 10}  # t = 0: 12 values
    for t, vals in values.items():
        rs.update(torch.full((len(vals),), t), torch.tensor(vals, dtype=torch.float64))
    rms = torch.tensor([math.sqrt(2.5), 0.5, 0.1, 3.0], dtype=torch.float64)  # the last 10 of t = 0: 1, 2, 1, 2, ...
    expected = rms / rms.sum() * 0.999 + 0.001 / 4
    assert torch.allclose(rs.probabilities(), expected, rtol=1e-12, atol=0)
    t, weight = rs.sample(200_000, "cpu", torch.Generator().manual_seed(0))
    assert torch.allclose(weight.double(), 1 / (4 * expected[t]), rtol=1e-6)
    L = torch.tensor([0.7, 0.2, 0.05, 1.1], dtype=torch.float64)  # E_t~p[T w_t L_t] = sum_t L_t
    assert abs((4 * weight.double() * L[t]).mean().item() - L.sum().item()) < 0.01


def test_vlb_loss_with_importance_sampling_weights_t_by_one_over_p(sched):
    loss_fn = VLBLoss(importance_sampling=True, history=2)
    denoiser = Denoiser(SplitNet(), sched, variance="learned_range")
    for seed in range(3):  # 3 x 64 draws: every one of the 10 t has 2 values
        loss, t = loss_fn(denoiser, pixels(64, seed), torch.Generator().manual_seed(seed))
    assert (loss_fn.resampler.seen >= 2).all()
    p = loss_fn.resampler.probabilities()
    loss, t = loss_fn(denoiser, pixels(64, 9), torch.Generator().manual_seed(9))
    assert torch.allclose(loss.double(), loss_fn.terms["vb"].double() / p[t], rtol=1e-5)
    with pytest.raises(ConfigError, match="history=0"):
        VLBLoss(importance_sampling=True, history=0)


def test_the_loss_and_model_options_compose_into_a_hybrid_model(tmp_path):
    from hydra.utils import instantiate

    from support.runs import compose_train

    cfg = compose_train("loss=hybrid", "model=mlp", "model.learn_sigma=true", "denoiser.variance=learned_range",
                        tmp_path=tmp_path)
    loss, net = instantiate(cfg.loss), instantiate(cfg.model)
    assert isinstance(loss, HybridLoss) and loss.lambda_vlb == 0.001 and net.learn_sigma
    assert instantiate(cfg.denoiser)(net=net, schedule=schedules.linear(T)).learned
    vlb = instantiate(compose_train("loss=vlb", tmp_path=tmp_path).loss)
    assert isinstance(vlb, VLBLoss) and (vlb.importance_sampling, vlb.history) == (False, 10)


def test_a_loss_that_cannot_train_the_network_output_fails_when_the_module_is_built(tmp_path):
    from support.runs import compose_train

    from ddpm.runs.build import build_module

    cases = [(("loss=hybrid",), "loss=hybrid trains a learned variance, but the network outputs C channels"),
             (("model.learn_sigma=true", "denoiser.variance=learned_range"), "loss=simple does not train")]
    for overrides, named in cases:
        with pytest.raises(Exception) as err:  # at build, before the first training step
            build_module(compose_train("model=mlp", "data=moons", *overrides, tmp_path=tmp_path))
        error = root_config_error(err.value)  # what the entry points print (Hydra wraps it)
        assert named in str(error) and "\n" not in str(error)


def test_the_bound_of_an_exact_mean_with_v_minus_one_is_the_decoder_alone(sched):
    """v = -1 makes p(x_{t-1} | x_t) the true posterior q(x_{t-1} | x_t, x_0) when the mean is exact: every KL is 0,
    and the decoder is the 256-bin Gaussian around x_0 with variance beta~_1 (the clipped beta~_0)."""
    from ddpm.diffusion.likelihood import nll_bpd

    x0 = pixels(4, seed=7)

    class ExactNet(nn.Module):
        def forward(self, x_t, t, cond=None):
            a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
            return torch.cat([(x_t - a.sqrt() * x0) / (1 - a).sqrt(), -torch.ones_like(x_t)], dim=1)

    out = nll_bpd(Denoiser(ExactNet(), sched, variance="learned_range", clip_denoised=False), x0, torch.Generator())
    assert out["terms"][:, 1:].abs().max() < 1e-4
    _, _, beta_tilde = float64_schedule()
    std, half = beta_tilde[0].sqrt(), 1 / 255  # a bin of half-width 1/255 centred on x_0: 2 Phi(half / std) - 1
    x = x0.double()
    p = torch.where((x < -1 + half) | (x > 1 - half), ndtr(half / std), 2 * ndtr(half / std) - 1)
    expected = -p.log().flatten(1).mean(1) / math.log(2)
    assert torch.allclose(out["decoder"], expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_a_learned_variance_carried_to_100_of_1000_steps_is_the_interpolation_of_the_respaced_betas(name):
    from ddpm.diffusion.timesteps import timestep_sequence

    sched = getattr(schedules, name)(1000)
    kept = timestep_sequence(sched, 100)  # [999, ..., 0]
    spaced, t, k = schedules.respace(sched, kept), torch.tensor(kept), torch.arange(99, -1, -1)
    v = torch.rand(100, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    w = sched.variance_fraction(sched.learned_log_variance(v, t), t)  # what the respaced DDPM step does
    got = spaced.learned_log_variance(2 * w - 1, k).squeeze(1).double()
    abar = torch.tensor(sched.alphas_cumprod_host, dtype=torch.float64)[t]  # float64, from the float64 abar
    abar_next = torch.cat([abar[1:], torch.ones(1, dtype=torch.float64)])
    beta = 1 - abar / abar_next
    beta_tilde = beta * (1 - abar_next) / (1 - abar)
    w64 = (v.double().squeeze(1) + 1) / 2
    expected = w64 * beta.log() + (1 - w64) * beta_tilde.log()
    assert torch.allclose(got[:-1], expected[:-1], rtol=0, atol=3e-5)  # the step into x_0 adds no noise


def test_dit_learn_sigma_doubles_the_output_channels_and_leaves_the_plain_dit_unchanged():
    from ddpm.nets.dit import DiT

    kw = dict(image_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=1, num_heads=2)
    torch.manual_seed(0)
    plain = DiT(**kw).state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(plain.values(), DiT(**kw, learn_sigma=False).state_dict().values()))
    learned = DiT(**kw, learn_sigma=True)
    changed = {k for k, v in learned.state_dict().items() if plain[k].shape != v.shape}
    assert learned.state_dict().keys() == plain.keys() and changed == {"final_layer.linear.weight", "final_layer.linear.bias"}
    x = torch.randn(2, 3, 8, 8)
    assert learned(x, torch.tensor([0, 5])).shape == (2, 6, 8, 8)
    Denoiser(learned, schedules.linear(T), variance="learned_range")(x, torch.tensor([0, 5]))  # the seam accepts it
