"""The variational bound in bits/dim against closed forms computed here in float64 from the betas."""

import math

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.likelihood import discretized_gaussian_log_likelihood, nll_bpd, normal_kl, prior_bpd, vb_term_bpd
from support.oracles import gaussian_denoiser, point_denoiser

LN2 = math.log(2.0)


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def betas_and_abar(T: int):
    betas = schedules.linear_betas(T, 1e-4, 0.02)  # float64
    return betas, torch.cumprod(1 - betas, 0)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0])
    v1, v2 = torch.tensor([0.5, 2.0]), torch.tensor([1.5, 0.1])
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt()))
    assert torch.allclose(normal_kl(m1, v1.log(), m2, v2.log()), expected, rtol=1e-6)


def test_discretized_decoder_matches_the_normal_cdf_and_sums_to_one():
    mean, s = torch.tensor(0.1, dtype=torch.float64), 0.05
    grid = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    logp = discretized_gaussian_log_likelihood(grid, mean.expand(256), torch.tensor(math.log(s), dtype=torch.float64).expand(256))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)  # the 256 bins cover the real line
    k = 140  # an interior level: P = Phi((x - m + 1/255) / s) - Phi((x - m - 1/255) / s)
    x = grid[k].item()
    assert logp[k].exp().item() == pytest.approx(phi((x - 0.1 + 1 / 255) / s) - phi((x - 0.1 - 1 / 255) / s), rel=1e-9)
    assert logp[0].exp().item() == pytest.approx(phi((-1 - 0.1 + 1 / 255) / s), abs=1e-15)  # edge bin to -inf
    # far in the tail the difference of two CDFs would cancel; the log stays finite and exact
    far = discretized_gaussian_log_likelihood(torch.tensor([0.9]), torch.tensor([0.0]), torch.tensor([math.log(0.01)]))
    assert torch.isfinite(far).all() and far.item() < -3000


def test_prior_term_is_kl_of_q_xT_to_a_standard_normal():
    sched = schedules.linear()
    _, abar = betas_and_abar(1000)
    a = abar[-1].item()
    x0 = torch.tensor([[0.7, -0.2, 1.0, -1.0]])
    # KL(N(sqrt(a) x, 1 - a) || N(0, 1)) = 0.5 (a x^2 + (1 - a) - 1 - log(1 - a))
    expected = sum(0.5 * (a * x**2 - a - math.log(1 - a)) for x in x0.flatten().tolist()) / 4 / LN2
    assert prior_bpd(sched, x0).item() == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_bound_on_a_single_data_point_fitted_exactly_is_the_analytic_value(variance):
    # With x0_hat = x0 exactly every mean matches, so the KLs reduce to variance mismatches:
    # 0 for fixed_small (beta~_t = posterior variance); for fixed_large, per t >= 1,
    # 0.5 (log(beta_t / beta~_t) + beta~_t / beta_t - 1). The decoder's mean at t = 0 is x0 itself
    # (posterior coef1_0 = 1, coef2_0 = 0) with variance beta~_1 in both variants.
    T = 100
    sched = schedules.linear(num_timesteps=T)
    betas, abar = betas_and_abar(T)
    bt = betas * torch.cat([abar.new_ones(1), abar[:-1]]).neg().add(1) / (1 - abar)  # beta~_t
    levels = torch.tensor([0, 1, 100, 128, 254, 255], dtype=torch.float64)
    x0 = (levels * 2 / 255 - 1).float().view(1, 1, 2, 3)

    s = math.sqrt(bt[1].item())
    interior, edge = -math.log(2 * phi(1 / 255 / s) - 1), -math.log(phi(1 / 255 / s))
    decoder = (2 * edge + 4 * interior) / 6 / LN2  # levels 0 and 255 are edge bins
    a = abar[-1].item()
    prior = sum(0.5 * (a * x**2 - a - math.log(1 - a)) for x in x0.double().flatten().tolist()) / 6 / LN2
    kl = 0.0
    if variance == "fixed_large":
        r = bt[1:] / betas[1:]
        kl = (0.5 * (-r.log() + r - 1)).sum().item() / LN2
    expected = prior + decoder + kl

    denoiser = point_denoiser(sched, x0, variance=variance)
    out = nll_bpd(denoiser, x0.expand(3, -1, -1, -1), torch.Generator().manual_seed(0))
    assert torch.allclose(out["total"], torch.full((3,), expected, dtype=torch.float64), rtol=1e-4)
    assert out["decoder"][0].item() == pytest.approx(decoder, rel=1e-4)
    assert out["prior"][0].item() == pytest.approx(prior, rel=1e-3)
    assert out["terms"].shape == (3, T)


def test_kl_terms_for_gaussian_data_with_the_exact_denoiser_match_their_expectation():
    # Data N(mu, std^2): E[x0 | x_t] is exact, and E_q[(x0 - E[x0|x_t])^2] = Var[x0 | x_t]
    # = std^2 (1 - abar_t) / (abar_t std^2 + 1 - abar_t). With fixed_small the KL at t is
    # 0.5 coef1_t^2 (x0 - x0_hat)^2 / beta~_t, whose expectation follows.
    sched = schedules.linear()
    betas, abar = betas_and_abar(1000)
    mu, std = 0.3, 0.5
    g = torch.Generator().manual_seed(0)
    x0 = mu + std * torch.randn(2000, 16, generator=g)  # 32,000 draws of a chi-square(1): 0.8% error
    model = gaussian_denoiser(sched, mu, std, variance="fixed_small", clip_denoised=False)
    for t_int in (1, 10, 300, 900):
        ab, ab_prev, b = abar[t_int].item(), abar[t_int - 1].item(), betas[t_int].item()
        coef1, beta_tilde = b * math.sqrt(ab_prev) / (1 - ab), b * (1 - ab_prev) / (1 - ab)
        post_var = std**2 * (1 - ab) / (ab * std**2 + 1 - ab)
        expected = 0.5 * coef1**2 * post_var / beta_tilde / LN2
        t = torch.full((2000,), t_int)
        got = vb_term_bpd(model, x0, t, torch.randn(x0.shape, generator=g))
        assert got.mean().item() == pytest.approx(expected, rel=0.04), t_int
