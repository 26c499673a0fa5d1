"""Classifier-free guidance, clipping and sampler dispatch on a continuous-time denoiser (EDM, flow), each against
the formula written out here in float64: eps~ = eps_u + s (eps_c - eps_u) from one batched call, x0 = (x_t - sigma
eps~) / alpha, the interval read in noise levels sigma / alpha, the null condition for no labels, clipping at
sampling only; the discrete samplers refused off VP in one line."""

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.continuous_losses import EDMLoss
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.process_sampler import ODESampler, check_sampler
from ddpm.diffusion.processes import EDMProcess, FlowProcess, VPProcess, process_name
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

K, D, B = 3, 4, 5
PROCESSES = {"edm": (EDMProcess, torch.tensor([0.01, 0.3, 1.0, 5.0, 60.0], dtype=torch.float64)),
             "flow": (FlowProcess, torch.tensor([0.05, 0.2, 0.5, 0.7, 0.95], dtype=torch.float64))}


class LabelNet(nn.Module):
    """F(x (B, D), c_noise (B,), labels (B,)) -> (B, D): nonlinear in all three; label K is the null class.
    Counts its calls and the batch of each."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(D + 1 + K + 1, 32), nn.SiLU(), nn.Linear(32, D)).double()
        self.batches: list[int] = []

    def forward(self, x, c_noise, labels=None):
        labels = torch.full((len(x),), K) if labels is None else labels
        self.batches.append(len(x))
        one_hot = nn.functional.one_hot(labels.long(), K + 1).to(x.dtype)
        return self.body(torch.cat([x, c_noise.to(x.dtype).view(-1, 1), one_hot], dim=1))


def setup(name: str, prediction: str, seed: int = 0):
    make, t = PROCESSES[name]
    process = make()
    denoiser = ContinuousDenoiser(LabelNet(seed), process, prediction)
    x_t = torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    return process, denoiser, x_t, t, labels


def by_hand(process, denoiser, x_t, t, labels, s: float) -> torch.Tensor:
    """x0 of the guided eps, from two separate unguided calls and the path's own formula."""
    eps_c = denoiser.predict(x_t, t, labels)[1]
    eps_u = denoiser.predict(x_t, t, torch.full((B,), K))[1]
    eps = eps_u + s * (eps_c - eps_u)
    return (x_t - process.sigma(t).view(-1, 1) * eps) / process.alpha(t).view(-1, 1)


@pytest.mark.parametrize("prediction", ["edm", "velocity"])
@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("s", [0.5, 1.25, 3.0])
def test_guided_x0_is_the_guided_eps_on_the_path_in_one_batched_call(name, prediction, s):
    process, denoiser, x_t, t, labels = setup(name, prediction)
    expected = by_hand(process, denoiser, x_t, t, labels, s)
    denoiser.net.batches.clear()
    guided = ClassifierFreeGuidance(denoiser, num_classes=K, scale=s)
    torch.testing.assert_close(guided(x_t, t, labels), expected, rtol=1e-12, atol=1e-12)
    assert denoiser.net.batches == [2 * B]  # [x_t; x_t] with [labels; null]


@pytest.mark.parametrize("name", PROCESSES)
def test_scale_one_is_the_conditional_model_zero_and_no_labels_the_unconditional_one(name):
    process, denoiser, x_t, t, labels = setup(name, "edm")
    null = torch.full((B,), K)
    torch.testing.assert_close(ClassifierFreeGuidance(denoiser, K, scale=1.0)(x_t, t, labels), denoiser(x_t, t, labels))
    torch.testing.assert_close(ClassifierFreeGuidance(denoiser, K, scale=0.0)(x_t, t, labels), denoiser(x_t, t, null))
    torch.testing.assert_close(ClassifierFreeGuidance(denoiser, K, scale=2.0)(x_t, t, None), denoiser(x_t, t, null))


@pytest.mark.parametrize("name", PROCESSES)
def test_the_interval_is_read_in_noise_levels(name):
    """Guided where lo <= sigma / alpha <= hi, the conditional model elsewhere (Kynkaanniemi et al. 2024)."""
    process, denoiser, x_t, t, labels = setup(name, "velocity")
    nu = process.noise_level(t)
    lo, hi = float(nu[1]), float(nu[3])  # the middle three samples lie inside
    guided = ClassifierFreeGuidance(denoiser, K, scale=2.0, interval=[lo, hi])(x_t, t, labels)
    inside = (nu >= lo) & (nu <= hi)
    expected = torch.where(inside.view(-1, 1), by_hand(process, denoiser, x_t, t, labels, 2.0),
                           by_hand(process, denoiser, x_t, t, labels, 1.0))
    torch.testing.assert_close(guided, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match=r"guidance.interval=\[2.0, 1.0\] is not allowed: .* noise levels sigma"):
        ClassifierFreeGuidance(denoiser, K, interval=[2.0, 1.0])


def test_clipping_is_the_samplers_alone_and_the_loss_sees_the_unclipped_prediction():
    process, denoiser, x_t, t, labels = setup("edm", "edm")
    x_t = 40 * x_t  # an x0_hat far outside [-1, 1]
    clipping = denoiser.replace(clip_denoised=True)
    raw = denoiser.predict(x_t, t, labels)[0]
    assert raw.abs().max() > 1
    torch.testing.assert_close(clipping(x_t, t, labels), raw.clamp(-1, 1))
    torch.testing.assert_close(clipping.predict(x_t, t, labels)[0], raw)
    guided = ClassifierFreeGuidance(clipping, K, scale=2.0)(x_t, t, labels)
    torch.testing.assert_close(guided, by_hand(process, denoiser, x_t, t, labels, 2.0).clamp(-1, 1))
    x0 = torch.rand(B, D, dtype=torch.float64) * 4 - 2
    losses = [EDMLoss()(d, x0, torch.Generator().manual_seed(3), labels)[0] for d in (denoiser, clipping)]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="denoiser.clip_denoised='yes' is not allowed"):
        denoiser.replace(clip_denoised="yes")


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(steps=5), DPMSolverSampler(steps=5)])
@pytest.mark.parametrize("name", PROCESSES)
def test_the_discrete_samplers_apply_to_vp_only(name, sampler):
    process = PROCESSES[name][0]()
    with pytest.raises(ConfigError, match=f"applies to process=vp only .* process={name} model samples with "
                                          "sampler=heun\\|euler\\|dpmpp_2m\\|dpmpp_3m\\|euler_maruyama"):
        check_sampler(sampler, process)
    check_sampler(sampler, VPProcess(schedules.linear(num_timesteps=10)))  # VP: fine
    check_sampler(ODESampler(), process)
    assert process_name(process) == name and process_name(None) == "vp"


@pytest.mark.parametrize("name", PROCESSES)
def test_the_module_facing_sampler_runs_the_guided_continuous_denoiser_on_its_process(name):
    """``ODESampler(denoiser, space, ...)`` on a continuous denoiser is its solver on the denoiser's own process
    (``space`` is not read), guided when wrapped: each call's x0 is the guided formula's."""
    process, denoiser, _, _, labels = setup(name, "velocity")
    guided = ClassifierFreeGuidance(denoiser, K, scale=1.5)
    x_T = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sampler = ODESampler("euler", steps=3)
    out = sampler(guided, None, x_T, None, labels)
    expected = sampler.ode(guided, process, x_T, None, labels)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert len(sampler.timesteps(process)) == 3
