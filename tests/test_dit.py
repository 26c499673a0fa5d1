"""The Diffusion Transformer (Peebles & Xie 2023): sizes, adaLN-Zero identity at init, the fixed 2-D
sin-cos position embedding, patchify/unpatchify, class conditioning, one training step, bad input."""

import math

import pytest
import torch

from conftest import TINY, compose_train
from ddpm.errors import ConfigError
from ddpm.nets.dit import DiT


def dit_param_count(image_size, channels, patch, width, depth, mlp_ratio=4.0, num_classes=None, out_channels=None,
                    pos_embed_params=0):
    """Parameters of the paper's DiT from its layer shapes (facebookresearch/DiT, models.py), weights + biases."""
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
    return patch_embed + t_mlp + labels + depth * block + final + pos_embed_params * tokens * width


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
    c = net.condition(t, y, 3, x.device)
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

    cfg = compose_train(*TINY, "model=dit_tiny", "model.num_classes=${data.num_classes}", "trainer.max_steps=2",
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
