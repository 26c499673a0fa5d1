"""Text prompts from the batch through training to sampling, with stand-in encoder and network
(tests/text_standins.py): the empty prompt as the null condition of guidance, caption dropping at rate
p_uncond, the jointly trained encoder in the optimizer and its EMA, sampling from prompts, and one line
per bad input."""

import functools
import re

import pytest
import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.conditions import TextCondition, cat_conditions
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.errors import ConfigError
from ddpm.nets.mlp import MLPDenoiser
from ddpm.training.conditioning import TextConditioning
from ddpm.training.module import DiffusionModule
from support.text_standins import CharEncoder, D, L, TextNet


def make_module(net=None, encoder="chars", p_uncond=0.1, denoiser=Denoiser, **kw):
    torch.manual_seed(0)
    net = net or TextNet()
    encoder = CharEncoder() if encoder == "chars" else encoder
    context_dim = getattr(net, "context_dim", None)
    conditioning = TextConditioning(encoder, p_uncond, context_dim=context_dim or None) \
        if encoder is not None or context_dim else None  # None: the net's kind
    return DiffusionModule(
        net=net, schedule=schedules.linear(1000), denoiser=denoiser, loss=SimpleLoss(),
        sampler=DDIMSampler(steps=5), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
        sample_shape=(2,), conditioning=conditioning, compile=None, channels_last=False, **kw)


def test_the_text_condition_ops_keep_each_sample_its_own_prompt():
    a = TextCondition(torch.randn(2, L, D), torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool())
    b = TextCondition(torch.randn(1, L, D), torch.tensor([[1, 1, 1, 0, 0, 0]]).bool())
    both = cat_conditions(a, b.expand(2))
    assert both.embeddings.shape == (4, L, D) and torch.equal(both.embeddings[3], b.embeddings[0])
    mixed = a.where(torch.tensor([True, False]), b)
    assert torch.equal(mixed.embeddings[0], a.embeddings[0]) and torch.equal(mixed.embeddings[1], b.embeddings[0])
    assert torch.equal(mixed.mask, torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]).bool())


def test_a_jointly_trained_encoder_is_optimized_averaged_and_checkpointed():
    module = make_module()
    optimizer = module.configure_optimizers()["optimizer"]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in module.conditioning.encoder.parameters())
    assert not any(id(p) in trained for p in module.conditioning.ema.parameters())  # the EMA copy is not trained
    loss = SimpleLoss()(module.denoiser(use_ema=False), torch.randn(8, 2), torch.Generator().manual_seed(0),
                        module.conditioning.captions_condition(["a", "b", "c", "d", "e", "f", "g", "h"], None))[0].mean()
    loss.backward()
    assert module.conditioning.encoder.table.weight.grad.abs().sum() > 0  # gradients reach the encoder
    keys = module.state_dict().keys()
    assert any(k.startswith("conditioning.encoder.") for k in keys) and any(k.startswith("conditioning.ema.") for k in keys)
    with torch.no_grad():
        module.conditioning.encoder.table.weight.add_(1.0)
    module.conditioning.update_ema()  # the first update copies (AveragedModel), then it averages
    assert torch.equal(module.conditioning.ema.module.table.weight, module.conditioning.encoder.table.weight)


def test_sampling_from_prompts_is_seeded_and_each_prompt_steers_its_sample():
    module = make_module(denoiser=functools.partial(Denoiser, prediction_type="x0"))  # x0 in (-1, 1): no saturation
    run = lambda prompts: module.sample(len(prompts), generator=torch.Generator().manual_seed(0), cond=prompts,
                                        guidance_scale=1.0)
    a, b = run(["three", "three"]), run(["three", "seven"])
    assert a.shape == (2, 2) and torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    encoded = module.conditioning.encode(["three", "seven"])
    c = module.sample(2, generator=torch.Generator().manual_seed(0), cond=encoded, guidance_scale=1.0)
    assert torch.equal(b, c)  # encoded prompts (TextCondition) give the same samples as their strings
    assert module.guidance_scale == module.guided().scale  # a text model is guided by default


@pytest.mark.parametrize("call, message", [
    (lambda: make_module(net=MLPDenoiser(hidden=8, num_classes=3), encoder=None).sample(
        2, cond=["a handwritten three", "x"]), "prompts=['a handwritten three', 'x'] were given to a class-conditional"),
    (lambda: make_module(net=MLPDenoiser(hidden=8), encoder=None).sample(1, cond="a three"),
     "prompts='a three' were given to an unconditional model"),
    (lambda: make_module().sample(2, cond=torch.tensor([1, 2])), "class labels were given to a text-conditional model"),
    (lambda: make_module().sample(3, cond=["a", "b"]), "2 conditions (labels or prompts) for 3 samples"),
    (lambda: make_module(net=MLPDenoiser(hidden=8)), "model.context_dim=None but conditioning=TextConditioning gives the net context_dim=8"),
    (lambda: make_module(encoder=type("Wide", (CharEncoder,), {"dim": 16})()),
     "the text encoder gives embeddings of width 16 but conditioning.context_dim=8"),
    (lambda: make_module(encoder=None).conditioning.training_condition((torch.randn(2, 2), [torch.randn(2, L, 5), torch.ones(2, L)]), None),
     "the precomputed embeddings have width 5 but conditioning.context_dim=8: set conditioning.context_dim=5"),
    (lambda: make_module(encoder=None).sample(1, cond=["a three"]), "pass prompts encoded by the same encoder"),
    (lambda: make_module().conditioning.training_condition((torch.randn(2, 2), torch.tensor([1, 2])), None),
     "needs captioned batches (images, captions)"),
])
def test_bad_prompt_input_is_one_line(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evaluate_samples_prompts_or_class_prompts_of_a_text_model():
    from omegaconf import OmegaConf

    from ddpm.runs.evaluate import sample_labels

    module = make_module()
    data = OmegaConf.create({"class_names": ["zero", "one", "two"], "caption_templates": ["a handwritten {name}", "x"]})
    cfg = lambda **kw: OmegaConf.create({"num_samples": 5, "seed": 0, **kw})
    cond, labels, scale, tag = sample_labels(cfg(prompts=["a three", "a one"], prompt_labels=[3, 1]), module, data)
    assert cond == ["a three", "a one", "a three", "a one", "a three"] and labels.tolist() == [3, 1, 3, 1, 3]
    assert scale == module.guidance_scale and "_prompts-a-three-a-one" in tag
    cond, labels, _, _ = sample_labels(cfg(), module, data)  # balanced class labels as class prompts
    assert labels.tolist() == [0, 1, 2, 0, 1] and cond[:3] == ["a handwritten zero", "a handwritten one", "a handwritten two"]
    for options, message in [({"prompts": ["a"], "class_labels": [1]}, "class_labels=[1] and prompts= were both given"),
                             ({"prompts": ["a"], "prompt_labels": [1, 2]}, "give one class label per prompt (1)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            sample_labels(cfg(**options), module, data)
    with pytest.raises(ConfigError, match=re.escape("prompts=['a three'] were given to a class-conditional")):
        sample_labels(cfg(prompts=["a three"]), make_module(net=MLPDenoiser(hidden=8, num_classes=3), encoder=None), data)
