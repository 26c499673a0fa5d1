"""The exact Gaussian-mixture denoiser (``ddpm.evaluation.mixture``), classifier-free guidance checked
against it on data=gaussians8 (the class is the mode), and the guidance-field figure drawn from it."""

import math
import sys

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from support.runs import ROOT
from ddpm.data.points import gaussians8
from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.mixture import GaussianMixtureEps, circle_centres, fraction_on_mode, gaussians8_eps, nearest_mode
from ddpm.plots.guidance import guidance_figure, guided_samples, pull_field
from support.oracles import GaussianNet

SCHEDULE = schedules.cosine(100)


def log_p_t(x, t_int, centres, std, classes=None):
    """log p_t(x) (N,) of the noised mixture as a torch.distributions object, float64: component k is
    N(sqrt(abar) mu_k, (abar std^2 + 1 - abar) I); ``classes``: keep only those components."""
    a = SCHEDULE.abar(t_int)
    mu = centres if classes is None else centres[classes]
    comp = Independent(Normal(math.sqrt(a) * mu, math.sqrt(a * std**2 + 1 - a) * torch.ones_like(mu)), 1)
    return MixtureSameFamily(Categorical(torch.ones(len(mu), dtype=torch.float64)), comp).log_prob(x)


@pytest.mark.parametrize("t_int", [0, 40, 99])
def test_exact_eps_is_minus_sigma_times_the_autograd_score_of_the_noised_mixture(t_int):
    centres, std = circle_centres(8, 0.8), 0.04
    net = GaussianMixtureEps(centres, std, SCHEDULE)
    x = (1.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(t_int), dtype=torch.float64)).requires_grad_()
    t = torch.full((64,), t_int)
    sigma = math.sqrt(1 - SCHEDULE.abar(t_int))
    (score_u,) = torch.autograd.grad(log_p_t(x, t_int, centres, std).sum(), x)
    (score_3,) = torch.autograd.grad(log_p_t(x, t_int, centres, std, classes=[3]).sum(), x)
    x = x.detach()
    torch.testing.assert_close(net(x, t), -sigma * score_u, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(net(x, t, torch.full((64,), 8)), -sigma * score_u, rtol=1e-9, atol=1e-9)  # null class
    torch.testing.assert_close(net(x, t, torch.full((64,), 3)), -sigma * score_3, rtol=1e-9, atol=1e-9)


def test_the_conditional_x0_is_the_posterior_mean_of_one_gaussian():
    net = gaussians8_eps(SCHEDULE)
    x, t = torch.randn(50, 2, dtype=torch.float64), torch.randint(0, 100, (50,))
    x0 = Denoiser(net, SCHEDULE, clip_denoised=False)(x.float(), t, torch.full((50,), 5)).x0
    expected = GaussianNet(SCHEDULE, net.centres[5], 0.04)(x, t)  # E[x0 | x_t] of N(mu_5, 0.04^2 I), float64
    torch.testing.assert_close(x0, expected, rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"in \[0, 8\]"):
        net(x, t, torch.full((50,), 9))


def test_the_centres_are_the_modes_of_gaussians8_in_label_order():
    points, labels = gaussians8(4000, torch.Generator().manual_seed(0), with_labels=True)
    assert torch.equal(nearest_mode(points, circle_centres()), labels)
    assert fraction_on_mode(points, labels, circle_centres()) == 1.0
    assert fraction_on_mode(points, (labels + 1) % 8, circle_centres()) == 0.0
    for k in range(8):
        torch.testing.assert_close(points[labels == k].double().mean(0), circle_centres()[k], rtol=0, atol=0.01)


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(steps=20)], ids=["ddpm", "ddim"])
def test_guidance_of_the_exact_model_lands_on_the_requested_mode(sampler):
    # Issue 11's target with the exact eps: s >= 3 puts >= 99% of samples nearest the requested mode,
    # s = 0 (unconditional) ignores the label and puts about 1/8 there.
    schedule = schedules.cosine(50)
    denoiser = Denoiser(gaussians8_eps(schedule), schedule)
    labels = torch.arange(240) % 8
    fractions = {}
    for s in (0.0, 3.0):
        x = guided_samples(ClassifierFreeGuidance(denoiser, 8, scale=s), labels, sampler, seed=1)
        fractions[s] = fraction_on_mode(x, labels, circle_centres())
    assert fractions[3.0] >= 0.99
    assert 0.05 < fractions[0.0] < 0.25, fractions


def test_the_guided_field_is_the_unconditional_one_plus_s_times_the_difference():
    denoiser = Denoiser(gaussians8_eps(SCHEDULE), SCHEDULE, clip_denoised=False)
    grid, cond = torch.rand(30, 2) * 3 - 1.5, torch.full((30,), 2)
    for t in (10, 60, 90):
        u, c, g = (pull_field(ClassifierFreeGuidance(denoiser, 8, scale=s), grid, t, cond) for s in (0.0, 1.0, 3.0))
        torch.testing.assert_close(g, u + 3 * (c - u), rtol=1e-4, atol=1e-4)  # x0 is linear in eps at fixed x_t


def test_the_figure_draws_three_field_rows_and_a_sample_row(tmp_path):
    from ddpm.plots.figures import save_figure

    schedule = schedules.cosine(20)
    net = gaussians8_eps(schedule)
    data, labels = gaussians8(200, torch.Generator().manual_seed(0), with_labels=True)
    fig = guidance_figure(
        Denoiser(net, schedule, clip_denoised=False), data, labels, net.centres, label=1, fractions=(0.5,),
        sample_scales=(0.0, 3.0), samples_per_class=5, grid_size=5,
    )
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(visible) == 3 * 1 + 2  # 3 fields x 1 t, 2 sample panels (a 4 x 2 grid: 3 hidden)
    assert [ax.get_title().split(":")[0] for ax in visible[-2:]] == ["$s = 0$", "$s = 3$"]
    fig.set_dpi(30)
    assert save_figure(fig, tmp_path / "g.png").shape[0] == 3 and (tmp_path / "g.png").stat().st_size > 5_000


def test_the_benchmark_prints_the_table_and_refuses_a_bad_call(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from guidance_fields import main
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    threads = str(torch.get_num_threads())
    rows = main(["--exact", "--timesteps", "20", "--per-class", "10", "--scales", "0", "3", "--threads", threads])
    assert set(rows) == {0.0, 3.0} and rows[3.0][0] >= 0.99 and rows[3.0][1] >= 0.9
    assert "| 3 | " in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--threads", threads])  # neither a checkpoint nor --exact
    assert stop.value.code == 2 and "give either a checkpoint path or --exact" in capsys.readouterr().err
