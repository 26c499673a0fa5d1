"""The Diffusion Transformer (Peebles & Xie 2023): sizes, adaLN-Zero identity at init, the fixed 2-D
sin-cos position embedding, patchify/unpatchify, class conditioning, one training step, bad input."""

import math

import pytest
import torch

from support.runs import TINY, compose_train
from ddpm.errors import ConfigError
from ddpm.nets.dit import DiT
from ddpm.nets.embeddings import timestep_embedding


def dit_param_count(image_size, channels, patch, width, depth, mlp_ratio=4.0, num_classes=None, out_channels=None,
                    pos_embed_params=0, long_skip=False, context_dim=None):
    """Parameters of the paper's DiT from its layer shapes (facebookresearch/DiT, models.py), weights + biases;
    U-ViT long skips: a Linear(2D, D) per skip (Bao et al. 2023); text: per block an affine LayerNorm and a
    cross-attention (q: D -> D, kv: Dc -> 2D, out: D -> D), and a Linear(Dc, D) for the pooled prompt."""
    out_channels = out_channels or channels
    linear = lambda i, o: i * o + o  # noqa: E731
    hidden = int(width * mlp_ratio)
    patch_embed = channels * patch * patch * width + width  # Conv2d(C, D, p, stride p)
    t_mlp = linear(256, width) + linear(width, width)  # 256 sinusoidal frequencies -> D -> D
    labels = (num_classes + 1) * width if num_classes else 0  # K classes + the null class
    block = linear(width, 3 * width) + linear(width, width) + linear(width, hidden) + linear(hidden, width) \
        + linear(width, 6 * width)  # qkv, proj, fc1, fc2, adaLN (shift, scale, gate) x 2
    final = linear(width, 2 * width) + linear(width, patch * patch * out_channels)
    tokens = (image_size // patch) ** 2
    skips = (depth // 2) * linear(2 * width, width) if long_skip else 0
    if context_dim:
        block += 2 * width + linear(width, width) + linear(context_dim, 2 * width) + linear(width, width)
        labels += linear(context_dim, width)
    return patch_embed + t_mlp + labels + depth * block + final + skips + pos_embed_params * tokens * width


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name,width,heads,paper_millions", [("S", 384, 6, 33), ("B", 768, 12, 130)])
def test_dit_s2_and_b2_have_the_papers_parameter_count(name, width, heads, paper_millions, monkeypatch):
    # The paper's 256px ImageNet models work on 32x32x4 latents, 12 blocks, patch 2.
    # shapes only: normal_ on the meta device first imports torch's decompositions (seconds)
    monkeypatch.setattr(DiT, "initialize_weights", lambda self: None)
    monkeypatch.setattr(torch.nn.Embedding, "reset_parameters", lambda self: None)
    with torch.device("meta"):  # no memory
        net = DiT(32, 4, 2, width, 12, heads)
        cond = DiT(32, 4, 2, width, 12, heads, num_classes=1000)
    assert n_params(net) == dit_param_count(32, 4, 2, width, 12)
    assert n_params(cond) == dit_param_count(32, 4, 2, width, 12, num_classes=1000)
    # The paper's Table 1 count (33M, 130M, rounded) is of its variant with a learned variance (2C outputs), whose
    # position embedding is a frozen nn.Parameter; ours is a buffer and predicts C values per pixel.
    paper = dit_param_count(32, 4, 2, width, 12, num_classes=1000, out_channels=8, pos_embed_params=1)
    assert paper / 1e6 == pytest.approx(paper_millions, rel=5e-3)


def tiny_dit(**kw):
    torch.manual_seed(0)
    return DiT(**{"image_size": 8, "in_channels": 3, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 4,
                  **kw})


def test_every_block_is_the_identity_and_the_net_outputs_zeros_at_init():
    net = tiny_dit(num_classes=5)
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([0, 4, 5])
    c, _ = net.condition(t, y, 3, x.device)
    h = net.patchify(x)
    assert h.abs().sum() > 0
    for block in net.blocks:
        assert torch.equal(block(h, c), h)
    assert torch.equal(net(x, t, y), torch.zeros_like(x))


def test_position_embedding_is_the_2d_sin_cos_formula():
    net = tiny_dit(hidden_size=16)  # grid 4x4, 16 channels: 4 per (axis, sin/cos)
    D, g = 16, 4
    expected = torch.zeros(g * g, D, dtype=torch.float64)
    for row in range(g):
        for col in range(g):
            for j, pos in enumerate([col, row]):  # first half of the channels: the column; second: the row
                for i in range(D // 4):
                    w = 10000.0 ** (-i / (D / 4))
                    expected[row * g + col, j * D // 2 + i] = math.sin(pos * w)
                    expected[row * g + col, j * D // 2 + D // 4 + i] = math.cos(pos * w)
    assert net.pos_embed.shape == (1, g * g, D)
    torch.testing.assert_close(net.pos_embed[0].double(), expected, rtol=0, atol=1e-7)
    assert "pos_embed" not in net.state_dict()  # rebuilt from the constructor, not stored in checkpoints


def test_unpatchify_inverts_the_patch_layout():
    net = tiny_dit(in_channels=3, patch_size=2)
    x = torch.randn(2, 3, 8, 8)
    # token (r, c) holds the values of patch (r, c) in (p, p, C) order, as the final linear lays them out
    tokens = x.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 12)  # (B, T, p*p*C)
    assert torch.equal(net.unpatchify(tokens), x)
    # the patch conv sees exactly those values: a conv of weight w is the linear map of the flattened patch
    w = net.x_embedder.weight.permute(0, 2, 3, 1).reshape(32, 12)  # (D, p*p*C)
    expected = tokens @ w.T + net.x_embedder.bias + net.pos_embed  # (B, T, D)
    torch.testing.assert_close(net.patchify(x), expected, rtol=1e-5, atol=1e-5)


def perturbed(net):
    with torch.no_grad():  # leave the zero init, so outputs depend on everything
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def test_class_conditioning_and_the_null_class():
    net = perturbed(tiny_dit(num_classes=3))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    with torch.no_grad():
        a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1]))
        null, none = net(x, t, torch.tensor([3, 3])), net(x, t)
    assert (a - b).abs().max() > 1e-3 and (a - null).abs().max() > 1e-3
    assert torch.equal(null, none)  # cond=None is the null class (row K)
    with pytest.raises(ConfigError, match="unconditional"):
        perturbed(tiny_dit())(x, t, torch.tensor([0, 1]))


def test_output_shape_and_scalar_timestep():
    net = perturbed(tiny_dit(in_channels=1, image_size=12, patch_size=4))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor(7)), net(x, torch.tensor([7, 7])))
    assert net(x, torch.tensor([7, 7])).shape == x.shape


def test_patch_size_that_does_not_divide_the_image_is_one_line():
    with pytest.raises(ConfigError) as err:
        tiny_dit(image_size=8, patch_size=3)
    msg = str(err.value)
    assert "\n" not in msg and "patch_size=3" in msg and "image_size=8" in msg


def test_one_training_step(tmp_path):
    from ddpm.runs.train import train

    cfg = compose_train(*TINY, "model=dit_tiny", "conditioning=class", "trainer.max_steps=2",
                        "callbacks.sample_grid=null", tmp_path=tmp_path)
    train(cfg)
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


def dit_forward_macs(image_size, channels, patch, width, depth, mlp_ratio=4.0):
    """Multiply-adds of one image's forward from the layer shapes (matmuls, the patch conv, attention)."""
    T, D, hidden = (image_size // patch) ** 2, width, int(width * mlp_ratio)
    per_block = T * (3 * D * D + D * D + 2 * D * hidden) + 2 * T * T * D + D * 6 * D  # qkv, proj, MLP, QK^T, AV, adaLN
    return T * channels * patch * patch * D + 256 * D + D * D + depth * per_block + D * 2 * D + T * D * patch * patch * channels


def test_forward_flops_match_the_layer_shapes_and_the_papers_gflops():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ddpm.training.perf import forward_flops

    net = tiny_dit(image_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2)
    with sdpa_kernel(SDPBackend.MATH):  # FlopCounterMode has no formula for the CPU flash kernel
        assert forward_flops(net, (3, 8, 8), "cpu") == 2 * dit_forward_macs(8, 3, 2, 32, 2)
    # Peebles & Xie 2023, Table 4: DiT-S/2 6.06 and DiT-B/2 23.01 Gflops (multiply-adds) on 32x32x4 latents
    assert dit_forward_macs(32, 4, 2, 384, 12) / 1e9 == pytest.approx(6.06, abs=0.01)
    assert dit_forward_macs(32, 4, 2, 768, 12) / 1e9 == pytest.approx(23.01, abs=0.02)


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_class_table_is_initialised_with_the_given_standard_deviation(std):
    table = tiny_dit(num_classes=999, class_embed_std=std).class_embed.weight  # (1000, 32): 32,000 N(0, std^2) draws
    assert table.mean().abs() < 0.05 * std and table.std().item() == pytest.approx(std, rel=0.03)


# ---- U-ViT long skips (Bao et al. 2023) -----------------------------------------------------------
def test_long_skips_add_one_linear_per_block_pair_and_default_off_keeps_the_papers_count(monkeypatch):
    monkeypatch.setattr(DiT, "initialize_weights", lambda self: None)
    with torch.device("meta"):
        net = DiT(32, 4, 2, 384, 12, 6, long_skip=True)
    assert len(net.skip_linears) == 6
    assert n_params(net) == dit_param_count(32, 4, 2, 384, 12, long_skip=True)
    assert n_params(net) - dit_param_count(32, 4, 2, 384, 12) == 6 * (2 * 384 * 384 + 384)
    assert len(tiny_dit(depth=3, long_skip=True).skip_linears) == 1  # odd depth: the middle block has no skip
    net = tiny_dit(long_skip=True, num_classes=10)
    assert n_params(net) == dit_param_count(8, 3, 2, 32, 2, num_classes=10, long_skip=True)


@pytest.mark.parametrize("depth", [4, 5])
def test_long_skips_feed_each_first_half_output_to_the_mirrored_block(depth):
    net = perturbed(tiny_dit(depth=depth, long_skip=True, num_classes=3))
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        c, _ = net.condition(t, y, 2, x.device)
        outs, h = [], net.patchify(x)
        for i, block in enumerate(net.blocks):  # written out: block depth-1-j takes block j's output
            j = depth - 1 - i
            if j < i:
                h = net.skip_linears[i - (depth - depth // 2)](torch.cat([h, outs[j]], dim=-1))
            h = block(h, c)
            outs.append(h)
        expected = net.unpatchify(net.final_layer(h, c))
        torch.testing.assert_close(net(x, t, y), expected, rtol=0, atol=0)


# ---- text conditions: cross-attention (PixArt-alpha) and a pooled prompt in c ----------------------
def text_dit(**kw):
    return tiny_dit(context_dim=12, **kw)


def prompt(batch=2, length=5, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # sample 0: 3 real tokens, then padding
    return torch.randn(batch, length, dim, generator=g), mask


def test_text_net_is_the_identity_at_init_and_keeps_num_classes_unset():
    net = text_dit()
    assert net.context_dim == 12 and net.num_classes is None
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([1, 500]), prompt()
    c, context = net.condition(t, ctx, 2, x.device)
    h = net.patchify(x)
    for block in net.blocks:
        assert torch.equal(block(h, c, context), h)  # zero gates and a zero cross-attention projection
    assert torch.equal(net(x, t, ctx), torch.zeros_like(x))


def test_text_net_output_shape_and_the_prompt_changes_the_output():
    net = perturbed(text_dit(long_skip=True, depth=3))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 500])
    with torch.no_grad():
        a, b = net(x, t, prompt(seed=0)), net(x, t, prompt(seed=1))
    assert a.shape == x.shape and (a - b).abs().max() > 1e-3


def test_pooled_prompt_is_the_mean_of_the_real_tokens_added_to_c():
    net = perturbed(text_dit())
    emb, mask = prompt()
    t = torch.tensor([4, 4])
    with torch.no_grad():
        c, _ = net.condition(t, (emb, mask), 2, emb.device)
        c_t = net.t_embedder(timestep_embedding(t, 256))
        W, b = net.context_embed.weight.double(), net.context_embed.bias.double()
        for i in range(2):
            real = [emb[i, k].double() for k in range(5) if mask[i, k]]
            mean = sum(real) / len(real)
            torch.testing.assert_close((c[i] - c_t[i]).double(), W @ mean + b, rtol=1e-5, atol=1e-5)


def test_padding_tokens_do_not_change_the_output_and_gradients_reach_the_prompt():
    net = perturbed(text_dit())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([9, 900])
    emb, mask = prompt()
    other = torch.where(mask[..., None], emb, 10 * torch.randn_like(emb))  # new values under mask=False only
    with torch.no_grad():
        assert torch.equal(net(x, t, (emb, mask)), net(x, t, (other, mask)))
    emb = emb.clone().requires_grad_(True)  # as a jointly trained text encoder's output
    net(x, t, (emb, mask)).square().sum().backward()
    assert emb.grad[mask].abs().amax(-1).min() > 0  # every real token gets a gradient
    assert torch.equal(emb.grad[~mask], torch.zeros_like(emb.grad[~mask]))  # padding gets none
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.blocks[0].cross_attn.parameters())


def test_a_batch_one_prompt_is_shared_by_the_batch():
    net = perturbed(text_dit())
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([9, 9, 9])
    emb, mask = prompt(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, (emb, mask)), net(x, t, (emb.expand(3, -1, -1), mask.expand(3, -1))))


def test_text_net_parameter_count_includes_the_cross_attention(monkeypatch):
    monkeypatch.setattr(DiT, "initialize_weights", lambda self: None)
    with torch.device("meta"):
        net = DiT(32, 4, 2, 384, 12, 6, context_dim=512)
    assert n_params(net) == dit_param_count(32, 4, 2, 384, 12, context_dim=512)
    assert n_params(text_dit()) == dit_param_count(8, 3, 2, 32, 2, context_dim=12)


@pytest.mark.parametrize("kw,cond,match", [
    ({}, "text", "without cross-attention"),
    ({"num_classes": 3}, "text", "without cross-attention"),
    ({"context_dim": 12}, "labels", "was given class labels"),
    ({"context_dim": 12}, None, "was given cond=None"),
    ({"context_dim": 12}, "wide", "use embeddings"),
])
def test_a_condition_the_net_cannot_take_is_one_line(kw, cond, match):
    net = tiny_dit(**kw)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    cond = {"text": prompt(), "labels": torch.tensor([0, 1]), None: None, "wide": prompt(dim=13)}[cond]
    with pytest.raises(ConfigError, match=match) as err:
        net(x, t, cond)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,match", [({"context_dim": 12, "num_classes": 10}, "both set"),
                                      ({"context_dim": 0}, "context_dim=0"), ({"long_skip": 1}, "long_skip=1"),
                                      ({"class_embed_std": 0.0}, "class_embed_std=0.0")])
def test_bad_text_and_skip_arguments_are_one_line(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny_dit(**kw)


# ---- the DiT in the rest of the framework: schedules, prediction types, samplers, EMA, guidance --------
# Every prediction type and sampler once; schedules change only the betas (the DiT sees integer t in [0, T)).
@pytest.mark.parametrize("schedule,prediction,sampler", [
    ("linear", "epsilon", "ddpm"), ("cosine", "v", "ddim"), ("scaled_linear", "x0", "dpm_solver"),
])
def test_dit_trains_and_samples_with_every_schedule_prediction_and_sampler(schedule, prediction, sampler, tmp_path):
    from ddpm.runs.build import build_module

    steps = [] if sampler == "ddpm" else ["sampler.steps=3"]
    cfg = compose_train("model=dit_tiny", "conditioning=class", "model.long_skip=true",
                        f"schedule={schedule}", "schedule.num_timesteps=10", f"denoiser.prediction_type={prediction}",
                        f"sampler={sampler}", *steps, tmp_path=tmp_path)
    module = build_module(cfg)
    batch = (torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 10)

    def loss():  # the same t, eps and label drops each time
        module._noise = torch.Generator().manual_seed(0)
        return module.compute_loss(batch)[0].mean()

    opt = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    before = loss()
    before.backward()
    opt.step()
    assert loss() < before  # the gradient of this prediction target reaches the DiT's zero-initialised output
    sample = lambda **kw: module.sample(2, torch.Generator().manual_seed(1), **kw)  # noqa: E731
    assert not torch.equal(sample(), sample(use_ema=False))  # the EMA copy: still the initial net
    module.ema.update_parameters(module.net)  # the first update copies the weights
    assert torch.equal(sample(), sample(use_ema=False))  # so the copy (buffers rebuilt too) is the same function
    images = module.sample(4, torch.Generator().manual_seed(0), cond=torch.tensor([0, 3, 7, 9]), guidance_scale=2.0)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()  # guided: conditional and null-class rows


def test_dit_under_bf16_autocast_stays_within_bf16_rounding():
    net = perturbed(text_dit(long_skip=True, depth=3))
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([3, 800]), prompt()
    with torch.no_grad():
        want = net(x, t, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x, t, ctx)
    assert ((got.double() - want.double()).norm() / want.double().norm()).item() < 3e-2  # 8-bit mantissa


def test_dit_traces_as_one_graph_for_torch_compile():
    # fullgraph: TorchDynamo must capture the whole forward (no graph break, no fallback to Python); the
    # "eager" backend skips Inductor's code generation (tens of seconds on a CPU), which test_speed.py covers.
    # (the text net traced too when checked by hand; one case here for the time)
    net = perturbed(tiny_dit(long_skip=True, depth=3, num_classes=3))
    x, t, cond = torch.randn(2, 3, 8, 8), torch.tensor([3, 800]), torch.tensor([0, 3])
    names = list(net.state_dict())
    with torch.no_grad():
        want = net(x, t, cond)
        torch._dynamo.reset()
        net.compile(backend="eager", fullgraph=True)
        got = net(x, t, cond)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert list(net.state_dict()) == names  # checkpoints load into an eager network and back
