"""The conditioning object (ddpm.training.conditioning): every kind answers the same calls, so the module,
the callbacks and evaluate.py never ask which kind they hold. Guidance is tested once here for all kinds,
through the module, against two separate network calls combined in float64."""

import functools
import math

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.errors import ConfigError
from ddpm.nets.mlp import MLPDenoiser
from ddpm.training.conditioning import ClassConditioning, TextConditioning, Unconditional
from ddpm.training.module import DiffusionModule
from support.text_standins import CharEncoder, TextNet

K = 3
PROMPTS = ["a zero", "a one", "a two"]  # the class prompts of a text model: prompt k depicts class k


def make(kind: str, p_uncond: float = 0.1) -> DiffusionModule:
    """A module of ``kind`` on 2-D points, random weights (so conditions matter)."""
    torch.manual_seed(0)
    net, conditioning = {
        "none": lambda: (MLPDenoiser(hidden=16), Unconditional()),
        "class": lambda: (MLPDenoiser(hidden=16, num_classes=K), ClassConditioning(K, p_uncond)),
        "text": lambda: (TextNet(), TextConditioning(CharEncoder(), p_uncond)),
    }[kind]()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    unclipped = functools.partial(Denoiser, clip_denoised=False)  # the formula holds on eps before any clipping
    return DiffusionModule(net, schedules.linear(num_timesteps=100), unclipped, SimpleLoss(), DDIMSampler(steps=3),
                           lambda params: torch.optim.Adam(params), sample_shape=(2,), compile=None,
                           conditioning=conditioning)


def net_condition(module, labels):
    """What the net is given for classes ``labels`` (B,), and for the null condition, built here by hand."""
    if isinstance(module.conditioning, ClassConditioning):
        return labels, torch.full_like(labels, K)  # label K: the null class
    text = module.conditioning
    return text.encode([PROMPTS[int(k)] for k in labels]), text.encode([""]).expand(len(labels))  # "" : the null prompt


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guidance_is_eps_u_plus_s_times_the_difference_for_every_kind(kind):
    module = make(kind)
    x, t, labels = torch.randn(4, 2), torch.tensor([3, 30, 60, 99]), torch.tensor([0, 1, 2, 1])
    cond, null = net_condition(module, labels)
    denoiser = module.denoiser()
    with torch.no_grad():
        eps_c = denoiser(x, t, cond).eps.double()  # two separate calls, combined in float64
        eps_u = denoiser(x, t, null).eps.double()
        request = module.conditioning.for_labels(labels, PROMPTS)  # labels, or the class prompts
        given = module.conditioning.sampling_condition(request, module.device)
        for s in (0.0, 1.0, 2.5):
            guided = module.guided(guidance_scale=s)(x, t, given)
            torch.testing.assert_close(guided.eps.double(), eps_u + s * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module.guided(guidance_scale=3.0)(x, t, None).eps.double(), eps_u)  # no condition


@pytest.mark.parametrize("kind, p", [("class", 0.0), ("class", 0.3), ("class", 1.0), ("text", 0.0), ("text", 0.3),
                                     ("text", 1.0)])
def test_training_conditions_are_dropped_to_the_null_condition_at_rate_p_uncond(kind, p):
    module = make(kind, p_uncond=p)
    n = 3000
    labels = torch.arange(n) % K
    captions = [PROMPTS[int(k)] for k in labels] if kind == "text" else labels
    got = module.conditioning.training_condition((torch.zeros(n, 2), captions), torch.Generator().manual_seed(1))
    cond, null = net_condition(module, labels)
    if kind == "class":
        dropped, kept_right = got == K, torch.equal(got[got != K], labels[got != K])
    else:
        dropped = (got.embeddings == null.embeddings).all(-1).all(-1)  # (n,)
        kept_right = torch.equal(got.embeddings[~dropped], cond.embeddings[~dropped])
    assert kept_right  # the rest keep their own condition
    # the count of dropped conditions is Binomial(n, p): within 5 standard deviations of n p
    assert abs(int(dropped.sum()) - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("kind, labels", [("none", None), ("class", [0, 1, 2, 0, 1, 2, 0]),
                                          ("text", [0, 1, 2, 0, 1, 2, 0])])
def test_balanced_samples_cycle_over_the_classes_as_each_kind_takes_them(kind, labels):
    module = make(kind)
    cond, got = module.conditioning.balanced(7, PROMPTS)
    assert (got is None and cond is None) if labels is None else got.tolist() == labels
    if kind == "class":
        assert torch.equal(cond, got)
    if kind == "text":
        assert cond == [PROMPTS[k] for k in labels]
    images = module.sample(7, torch.Generator().manual_seed(0), cond=cond)
    assert images.shape == (7, 2) and module.conditional == (kind != "none")


def test_a_text_model_on_precomputed_embeddings_cannot_be_asked_for_a_class():
    conditioning = TextConditioning(encoder=None, context_dim=8)
    assert conditioning.balanced(5, PROMPTS) == (None, None)  # the empty prompt's samples, no accuracy
    assert conditioning.net_args() == {"context_dim": 8} and not conditioning.needs_class_prompts


def test_the_empty_prompt_of_precomputed_embeddings_is_kept_in_the_checkpoint():
    conditioning = TextConditioning(encoder=None, context_dim=8)
    null = (torch.randn(1, 6, 8), torch.tensor([[True, False, False, False, False, False]]))
    conditioning.set_null(null)
    checkpoint = {}
    conditioning.on_save_checkpoint(checkpoint)
    restored = TextConditioning(encoder=None, context_dim=8)
    restored.on_load_checkpoint(checkpoint)
    assert torch.equal(restored.null().embeddings, null[0]) and torch.equal(restored.null().mask, null[1])


def test_the_net_is_built_with_what_the_conditioning_decides():
    assert Unconditional().net_args() == {} and ClassConditioning(10).net_args() == {"num_classes": 10}
    assert TextConditioning(CharEncoder()).net_args() == {"context_dim": CharEncoder.dim}
    with pytest.raises(ConfigError, match="model.num_classes=None but conditioning=ClassConditioning gives the net "
                                          "num_classes=3") as err:
        ClassConditioning(K).check_net(MLPDenoiser(hidden=8))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make_it, message", [
    (lambda: ClassConditioning(0), "conditioning.num_classes=0 is not allowed"),
    (lambda: ClassConditioning(3, p_uncond=1.5), "conditioning.p_uncond=1.5 is not allowed"),
    (lambda: TextConditioning(encoder=None), "conditioning.context_dim=null without a text encoder"),
    (lambda: TextConditioning(CharEncoder(), context_dim=16), "embeddings of width 8 but conditioning.context_dim=16"),
    (lambda: Unconditional().sampling_condition(["a three"], "cpu"), "were given to an unconditional model"),
    (lambda: Unconditional().guidance_args(), "guidance needs a class- or text-conditional model"),
])
def test_bad_conditioning_input_is_one_line(make_it, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_it()
    assert "\n" not in str(err.value)
