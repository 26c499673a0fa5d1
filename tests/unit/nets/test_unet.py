"""Tests for the DDPM U-Net (src/ddpm/unet.py) and its conf/model/*.yaml configurations."""

from __future__ import annotations


import pytest
import torch
import yaml

from ddpm.errors import ConfigError
from ddpm.nets.unet import AttnBlock, UNet
from support.runs import CONF

MODEL_CONFS = CONF / "model"
# (batch, channels, image_size) fed to each model config in the shape test.
DATA_SHAPES = {
    "unet_cifar10": (1, 3, 32),
    "unet_mnist": (2, 1, 28),
    "unet_mnist_cpu": (2, 1, 28),
    "unet_small": (2, 1, 8),
    "unet_tiny": (2, 1, 8),
    "unet_latent": (2, 4, 8),  # the 4x8x8 latents of an f=4 autoencoder on 28x28 (padded to 32) images
}


def build(name: str, channels: int = 1, image_size: int = 8, **overrides) -> UNet:
    """Instantiate conf/model/<name>.yaml by hand, substituting the interpolations (the data's shape; no
    conditioning, no learned variance: what the other groups' defaults give)."""
    conf = yaml.safe_load((MODEL_CONFS / f"{name}.yaml").read_text())
    assert conf.pop("_target_") == "ddpm.nets.unet.UNet"
    conf.update(image_size=image_size, in_channels=channels, num_classes=None, context_dim=None, learn_sigma=False)
    conf.update(overrides)
    return UNet(**conf)


def randomised(model: UNet, seed: int = 0) -> UNet:
    """Give the zero-initialised layers random weights so the output depends on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def tiny() -> UNet:
    torch.manual_seed(0)
    return randomised(build("unet_tiny")).eval()


@pytest.mark.parametrize(  # the MLP (conf/model/mlp.yaml) is tested in test_toy.py
    "name", sorted(p.stem for p in MODEL_CONFS.glob("*.yaml") if "ddpm.nets.unet.UNet" in p.read_text())
)
def test_output_shape_equals_input_shape(name: str) -> None:
    assert name in DATA_SHAPES, f"add the data shape for conf/model/{name}.yaml to DATA_SHAPES"
    batch, channels, size = DATA_SHAPES[name]
    model = build(name, channels, size).eval()
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        out = model(x, torch.randint(0, 1000, (batch,)))
    assert out.shape == x.shape


def test_cifar10_config_has_the_paper_parameter_count() -> None:
    model = build("unet_cifar10", channels=3, image_size=32)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 35.7e6) < 0.1e6, n_params  # Ho et al.'s CIFAR-10 model has 35,746,307


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"image_size": 9}, "image_size=9"),
        ({"base_channels": 48}, "base_channels=48"),
        ({"attn_resolutions": (16,)}, "attn_resolutions=(16,)"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"num_res_blocks": 0}, "num_res_blocks=0"),
    ],
)
def test_bad_argument_raises_value_error_naming_it(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
        build("unet_tiny", **overrides)
    assert named in str(err.value)


def test_image_size_error_says_which_sizes_are_allowed() -> None:
    with pytest.raises(ConfigError, match="use a multiple of 8"):
        UNet(image_size=30)


def test_timestep_changes_the_output(tiny: UNet) -> None:
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out_0 = tiny(x, torch.zeros(2, dtype=torch.long))
        out_500 = tiny(x, torch.full((2,), 500))
    assert not torch.allclose(out_0, out_500, atol=1e-4)


def test_attention_uses_scaled_dot_product_attention(tiny: UNet, monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        tiny(torch.randn(2, 1, 8, 8), torch.tensor([3, 7]))
    assert len(calls) == sum(isinstance(m, AttnBlock) for m in tiny.modules()) > 0


def test_channels_last_gives_the_same_output(tiny: UNet) -> None:
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        expected = tiny(x, t)
        out = tiny.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_eval_mode_is_deterministic_even_with_dropout() -> None:
    model = randomised(build("unet_tiny", dropout=0.5)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t), atol=0, rtol=0)


def test_runs_under_bf16_autocast(tiny: UNet) -> None:
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 999])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()


# --- patch_size: space-to-depth in, depth-to-space out ----------------------------------------------------

@pytest.mark.parametrize("learn_sigma", [False, True])
def test_a_patch_size_2_net_is_the_plain_net_on_folded_pixels(learn_sigma: bool) -> None:
    """UNet(28, C, patch_size=2)(x) = pixel_shuffle(UNet(14, 4C)(pixel_unshuffle(x))) with the same weights:
    the patches are folded into channels in front of the net and unfolded after it, nothing else."""
    kwargs = dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(7,), dropout=0.0,
                  learn_sigma=learn_sigma)
    patched = randomised(UNet(28, 1, patch_size=2, **kwargs)).eval()
    plain = UNet(14, 4, **kwargs).eval()
    plain.load_state_dict(patched.state_dict())  # the same parameter names and shapes
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    with torch.no_grad():
        out = patched(x, t)
        folded = torch.stack([x[:, 0, i::2, j::2] for i in range(2) for j in range(2)], 1)  # (3, 4, 14, 14) by hand
        expected = plain(folded, t)  # (3, 4 or 8, 14, 14)
    assert out.shape == (3, 2 if learn_sigma else 1, 28, 28)
    for c in range(out.shape[1]):
        for k, (i, j) in enumerate((i, j) for i in range(2) for j in range(2)):
            torch.testing.assert_close(out[:, c, i::2, j::2], expected[:, 4 * c + k], rtol=0, atol=0)


def test_patch_size_1_is_the_plain_net() -> None:
    torch.manual_seed(0)
    a = build("unet_tiny")
    torch.manual_seed(0)
    b = build("unet_tiny", patch_size=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("patch_size", [0, 3, 2.0, True])
def test_a_patch_size_that_does_not_divide_the_image_is_one_line(patch_size) -> None:
    with pytest.raises(ConfigError, match=r"model.patch_size=.* divides image_size=28"):
        UNet(28, 1, 32, (1, 2), 1, (7,), 0.0, patch_size=patch_size)


# --- text conditioning: cross-attention to a prompt (context_dim) ------------------------------------

from ddpm.nets.unet import CrossAttnBlock  # noqa: E402

CTX = 16  # context_dim of the text nets below


def text_unet(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return build("unet_tiny", context_dim=CTX, **overrides)


def prompt(lengths=(2, 5), L: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompt embeddings (B, L, CTX) and a mask (B, L) with ``lengths`` real tokens."""
    emb = torch.randn(len(lengths), L, CTX, generator=torch.Generator().manual_seed(seed))
    return emb, torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def without_cross_attention_zeroed(model: UNet) -> UNet:
    """``randomised`` for every zero-initialised layer except the cross-attention output projections."""
    randomised(model)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, CrossAttnBlock):
                block.attn.proj.weight.zero_()
                block.attn.proj.bias.zero_()
    return model


def test_text_unet_adds_cross_attention_last_keeping_the_unconditional_weights() -> None:
    torch.manual_seed(0)
    plain = build("unet_tiny").state_dict()
    model = text_unet(0)
    text = model.state_dict()
    assert all(torch.equal(text[k], v) for k, v in plain.items())  # same names, same initial weights
    added = set(text) - set(plain)
    assert all(k.startswith("context_proj.") or ".cross." in k for k in added)
    attn = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert len(attn) == 4 and all(isinstance(a.cross, CrossAttnBlock) for a in attn)  # down, middle, 2 x up at 4x4
    emb_ch = 4 * model.base_channels
    expected = emb_ch * CTX + emb_ch  # context_proj
    for a in attn:  # GroupNorm + q + kv + proj, from the layer shapes
        C = a.qkv.in_channels
        expected += 2 * C + (C * C + C) + (CTX * 2 * C + 2 * C) + (C * C + C)
    assert sum(text[k].numel() for k in added) == expected
    assert model.context_dim == CTX and model.num_classes is None


def test_text_unet_output_shape_and_a_shared_batch_one_prompt() -> None:
    model = without_cross_attention_zeroed(text_unet()).eval()
    randomised(model, seed=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    emb, mask = prompt(lengths=(3, 3))
    with torch.no_grad():
        out = model(x, t, (emb[:1], mask[:1]))
        assert out.shape == x.shape
        torch.testing.assert_close(out, model(x, t, (emb[:1].expand(2, -1, -1), mask[:1].expand(2, -1))))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(x, t, (emb, mask))).all()


def test_cross_attention_starts_as_the_identity() -> None:
    model = without_cross_attention_zeroed(text_unet()).eval()
    x, t, (emb, mask) = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), prompt()
    with torch.no_grad():
        out = model(x, t, (emb, mask))
        crosses = {a: a.cross for a in model.modules() if isinstance(a, AttnBlock)}
        for a in crosses:
            a.cross = None  # bypass the cross-attention; the pooled prompt still reaches the ResBlocks
        bypassed = model(x, t, (emb, mask))
        for a, cross in crosses.items():
            a.cross = cross
        torch.testing.assert_close(out, bypassed, atol=0, rtol=0)
        randomised(model, seed=5)  # now the cross-attention output projections are non-zero too
        assert not torch.allclose(model(x, t, (emb, mask)), out, atol=1e-4)


def test_the_pooled_prompt_is_the_mean_of_the_real_tokens_added_from_the_start() -> None:
    model = text_unet()  # as initialised: context_proj is not zero, so the prompt acts from step one
    seen = []
    model.context_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    emb, mask = prompt(lengths=(2, 5))
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), (emb, mask))
    e = emb.double()
    expected = torch.stack([e[0, :2].mean(0), e[1, :5].mean(0)])  # (B, CTX)
    torch.testing.assert_close(seen[0].double(), expected, atol=1e-6, rtol=1e-6)
    assert model.context_proj.weight.abs().sum() > 0


def test_masked_padding_does_not_change_the_output() -> None:
    model = randomised(text_unet()).eval()
    x, t, (emb, mask) = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), prompt()
    with torch.no_grad():
        out = model(x, t, (emb, mask))
        noisy = torch.where(mask[..., None], emb, 100 * torch.randn_like(emb))  # other values in the padding
        torch.testing.assert_close(model(x, t, (noisy, mask)), out, atol=1e-5, rtol=1e-5)
        longer = torch.cat([emb, torch.randn(2, 3, CTX)], 1), torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
        torch.testing.assert_close(model(x, t, longer), out, atol=1e-5, rtol=1e-5)  # more padding
        assert not torch.allclose(model(x, t, (emb.flip(0), mask.flip(0))), out, atol=1e-4)  # the prompt matters


def test_gradients_reach_the_real_tokens_of_the_context() -> None:
    model = randomised(text_unet())
    emb, mask = prompt()
    emb.requires_grad_(True)
    model(torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), (emb, mask)).square().sum().backward()
    assert emb.grad[mask].abs().sum(-1).gt(0).all() and not emb.grad[~mask].any()


def test_cross_attention_block_matches_a_float64_formula() -> None:
    torch.manual_seed(0)
    block = randomised(CrossAttnBlock(64, CTX))  # 2 heads of width 32
    x = torch.randn(2, 64, 3, 3)
    emb, mask = prompt(lengths=(1, 4))
    p = {k: v.double() for k, v in block.state_dict().items()}
    xd, ed = x.double(), emb.double()
    g = xd.reshape(2, 32, -1)  # GroupNorm(32): statistics per sample and group of 2 channels
    g = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)).reshape(2, 64, 9)
    tokens = (g * p["norm.weight"][:, None] + p["norm.bias"][:, None]).transpose(1, 2)  # (B, HW, C)
    q = (tokens @ p["attn.q.weight"].T + p["attn.q.bias"]).reshape(2, 9, 2, 32).transpose(1, 2)  # (B, h, HW, 32)
    k, v = (ed @ p["attn.kv.weight"].T + p["attn.kv.bias"]).reshape(2, 6, 2, 2, 32).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / 32**0.5).masked_fill(~mask[:, None, None, :], float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 64) @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    expected = xd + att.transpose(1, 2).reshape(2, 64, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb, mask).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("net", "cond", "words"),
    [
        ("plain", "text", "model.context_dim=null"),
        ("text", "labels", "was given class labels"),
        ("text", None, "was given cond=None"),
        ("text", "narrow", "use embeddings (2, L, 16)"),
    ],
)
def test_a_wrong_condition_is_one_line(net: str, cond, words: str) -> None:
    model = text_unet() if net == "text" else build("unet_tiny")
    emb, mask = prompt()
    cond = {"text": (emb, mask), "labels": torch.tensor([1, 2]), "narrow": (emb[..., :3], mask), None: None}[cond]
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), cond)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "named"), [({"context_dim": 0}, "context_dim=0"), ({"num_classes": 10}, "num_classes=10")]
)
def test_bad_context_dim_is_one_line(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
        text_unet(**overrides) if "num_classes" in overrides else build("unet_tiny", **overrides)
    assert named in str(err.value)


def test_a_32_channel_ddpm_block_does_not_see_the_embedding_and_a_scale_shift_block_does():
    """DDPM's block adds the embedding per channel before GroupNorm(32): with one channel per group the norm
    removes it; improved-diffusion's scale-shift norm applies it after the norm."""
    from ddpm.nets.unet import ResBlock

    torch.manual_seed(0)
    x, e1, e2 = torch.randn(2, 32, 8, 8), torch.randn(2, 16), torch.randn(2, 16)
    for scale_shift, sees in ((False, False), (True, True)):
        block = ResBlock(32, 32, 16, 0.0, scale_shift=scale_shift).eval()
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.2)  # the zero-initialised output conv would hide everything
        with torch.no_grad():
            change = (block(x, e1) - block(x, e2)).abs().max().item()
        assert (change > 1e-2) == sees, (scale_shift, change)


def test_scale_shift_norm_adds_one_projection_width_per_block_and_leaves_the_default_net_unchanged():
    plain, scaled = build("unet_tiny"), build("unet_tiny", scale_shift_norm=True)
    blocks = [m for m in plain.modules() if type(m).__name__ == "ResBlock"]
    extra = sum(b.emb_proj[1].in_features * b.emb_proj[1].out_features + b.emb_proj[1].out_features for b in blocks)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(scaled) - n(plain) == extra  # emb_proj: out_ch -> 2 out_ch
    assert set(plain.state_dict()) == set(scaled.state_dict())
    with pytest.raises(ConfigError, match="model.scale_shift_norm='yes' is not allowed"):
        build("unet_tiny", scale_shift_norm="yes")
