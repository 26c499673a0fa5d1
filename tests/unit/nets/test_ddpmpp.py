"""The DDPM++ net (src/ddpm/nets/ddpmpp.py) as EDM trains it on CIFAR-10: its parameter count from the layer shapes
and EDM's 55.73M, shapes, the noise and label inputs reaching the output, one block against a float64 formula,
bad input as one line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from ddpm.errors import ConfigError
from ddpm.nets.ddpmpp import Block, DDPMpp
from ddpm.nets.embeddings import timestep_embedding
from support.runs import CONF

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets: a second thread only adds contention

def ddpmpp_param_count(image_size, in_channels, N, mult, blocks, attn_res, num_classes=None, out_channels=None):
    """Weights + biases of DDPM++ from its description (ddpmpp.py docstring; EDM's SongUNet with --arch=ddpmpp).

    Mapping: Linear(N, 4N), Linear(4N, 4N), and a (K + 1, N) label table. A block (i -> o channels): GroupNorm(i),
    conv3x3(i, o), Linear(4N, o), GroupNorm(o), conv3x3(o, o), a 1x1 skip conv where i != o or it resamples, and
    with attention GroupNorm(o), 1x1 qkv (o -> 3o), 1x1 proj (o -> o). Encoder: conv3x3(C, N), per level a down
    block (not the first level) and ``blocks`` blocks; every encoder output is a skip. Middle: a block with attention
    and one without at the bottom. Decoder, per level upward: an up block (not the bottom level), ``blocks + 1``
    blocks eating a skip each, attention in the last one at an attention resolution. Out: GroupNorm, conv3x3.
    """
    E = 4 * N
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731

    def block(i, o, attention=False, resample=False):
        n = norm(i) + conv(i, o, 3) + E * o + o + norm(o) + conv(o, o, 3)
        n += conv(i, o, 1) if i != o or resample else 0
        return n + (norm(o) + conv(o, 3 * o, 1) + conv(o, o, 1) if attention else 0)

    total = N * E + E + E * E + E + ((num_classes + 1) * N if num_classes else 0)
    total += conv(in_channels, N, 3)
    skips, ch = [N], N
    levels = [(image_size // 2**level, N * m) for level, m in enumerate(mult)]
    for level, (res, width) in enumerate(levels):
        if level > 0:
            total += block(ch, ch, resample=True)
            skips.append(ch)
        for _ in range(blocks):
            total += block(ch, width, attention=res in attn_res)
            ch = width
            skips.append(ch)
    total += block(ch, ch, attention=True) + block(ch, ch)
    for level, (res, width) in reversed(list(enumerate(levels))):
        if level < len(levels) - 1:
            total += block(ch, ch, resample=True)
        for idx in range(blocks + 1):
            total += block(ch + skips.pop(), width, attention=idx == blocks and res in attn_res)
            ch = width
    return total + norm(ch) + conv(ch, out_channels or in_channels, 3)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


SMALL = dict(image_size=16, in_channels=3, model_channels=16, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(8,),
             dropout=0.0)


def small(**kw) -> DDPMpp:
    torch.manual_seed(0)
    return DDPMpp(**{**SMALL, **kw})


def test_the_cifar10_net_has_edms_55_73m_parameters_as_the_layer_shapes_give():
    cfg = yaml.safe_load((CONF / "model" / "ddpmpp_cifar10.yaml").read_text())
    args = dict(model_channels=cfg["model_channels"], channel_mult=cfg["channel_mult"], num_blocks=cfg["num_blocks"],
                attn_resolutions=cfg["attn_resolutions"], dropout=cfg["dropout"])
    assert (args["model_channels"], args["channel_mult"], args["num_blocks"], args["attn_resolutions"],
            args["dropout"]) == (128, [2, 2, 2], 4, [16], 0.13)  # EDM train.py --arch=ddpmpp, --dropout 0.13
    with torch.device("meta"):  # shapes only
        net = DDPMpp(32, 3, **args)
        cond = DDPMpp(32, 3, num_classes=10, **args)
    formula = ddpmpp_param_count(32, 3, 128, (2, 2, 2), 4, (16,))
    assert n_params(net) == formula
    assert n_params(cond) == ddpmpp_param_count(32, 3, 128, (2, 2, 2), 4, (16,), num_classes=10)
    # EDM's count (README, "55.73M" for DDPM++ at 32x32); its label Linear(10, 128) has as many parameters as our
    # 11-row table (10 x 128 weights + 128 biases = 11 x 128).
    assert n_params(net) / 1e6 == pytest.approx(55.73, abs=0.005)
    assert n_params(cond) - n_params(net) == 10 * 128 + 128


@pytest.mark.parametrize("kw", [{}, {"num_classes": 5, "learn_sigma": True},
                                {"channel_mult": (1, 2, 2), "attn_resolutions": (16, 4), "num_blocks": 1}])
def test_a_small_nets_parameter_count_is_the_formula(kw):
    args = {**SMALL, **kw}
    with torch.device("meta"):
        net = DDPMpp(**args)
    C = args["in_channels"]
    assert n_params(net) == ddpmpp_param_count(args["image_size"], C, args["model_channels"], args["channel_mult"],
                                               args["num_blocks"], args["attn_resolutions"], args.get("num_classes"),
                                               2 * C if args.get("learn_sigma") else C)


@pytest.mark.parametrize("kw, cond, channels", [({}, None, 3), ({"num_classes": 4}, torch.tensor([0, 3, 4]), 3),
                                                ({"num_classes": 4}, None, 3), ({"learn_sigma": True}, None, 6)])
def test_output_shape_for_float_noise_inputs_with_and_without_labels(kw, cond, channels):
    net = small(**kw).eval()
    x, c_noise = torch.randn(3, 3, 16, 16), torch.tensor([-1.2, 0.0, 0.7])  # EDM's c_noise = ln(sigma) / 4
    assert net(x, c_noise, cond).shape == (3, channels, 16, 16)
    assert net(x, torch.tensor(0.3)).shape == (3, channels, 16, 16)  # a scalar is shared by the batch


def test_the_untrained_net_outputs_nearly_zero_every_residual_branch_being_at_1e_5():
    out = small()(torch.randn(2, 3, 16, 16), torch.zeros(2))
    assert 0 < out.abs().max() < 1e-3


def redrawn(net: DDPMpp) -> DDPMpp:
    """The net with every weight drawn at full scale (no 1e-5 layers), as after some training."""
    torch.manual_seed(1)
    for name, p in net.named_parameters():
        torch.nn.init.normal_(p, std=1.0 if "norm" in name or "embed" in name else 1 / math.sqrt(p[0].numel()))
    return net.eval()


def test_the_noise_input_and_the_label_reach_the_output():
    net = redrawn(small(num_classes=4))
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([-1.0, 1.0]), torch.tensor([2, 2]))  # (2, C, H, W): the same image, two noise inputs
    assert (out[0] - out[1]).abs().max() > 1e-2 * out.abs().max()
    out = net(x, torch.tensor([0.1, 0.1]), torch.tensor([1, 4]))  # one noise input, a label and the null class
    assert (out[0] - out[1]).abs().max() > 1e-2 * out.abs().max()
    assert torch.equal(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.1, 0.1]), torch.tensor([4, 4])))


def test_the_noise_features_are_edms_positional_embedding_with_its_halves_swapped():
    # EDM PositionalEmbedding(N, endpoint=True): freqs (1/10000)^(i / (N/2 - 1)), [cos, sin]; SongUNet swaps the halves
    N, c = 16, torch.tensor([-1.3, 0.0, 0.25, 999.0], dtype=torch.float64)
    freqs = torch.tensor([(1 / 10000) ** (i / (N // 2 - 1)) for i in range(N // 2)], dtype=torch.float64)
    edm = torch.cat([torch.cos(c[:, None] * freqs), torch.sin(c[:, None] * freqs)], dim=1)  # (B, N)
    swapped = torch.cat([edm[:, N // 2:], edm[:, :N // 2]], dim=1)
    torch.testing.assert_close(timestep_embedding(c, N).double(), swapped, atol=1e-4, rtol=0)  # float32 arguments


def group_norm(x, groups, w, b, eps=1e-6):
    B, C, H, W = x.shape
    g = x.reshape(B, groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps)
    return g.reshape(B, C, H, W) * w[:, None, None] + b[:, None, None]


@pytest.mark.parametrize("resample", ["down", "up"])
def test_a_block_with_attention_is_the_formula_in_float64(resample):
    torch.manual_seed(0)
    blk = Block(8, 16, 12, 0.0, lambda c: torch.nn.GroupNorm(min(32, c // 4), c, eps=1e-6), resample, True).double()
    redrawn(blk)
    x, emb = torch.randn(2, 8, 4, 4, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    P = dict(blk.named_parameters())
    # [1, 1] filter: down = the mean of each 2x2 patch, up = each pixel repeated 2x2
    rs = (lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))) if resample == "down" else \
        (lambda t: t.repeat_interleave(2, 2).repeat_interleave(2, 3))
    h = F.conv2d(rs(F.silu(group_norm(x, 2, P["norm0.weight"], P["norm0.bias"]))), P["conv0.weight"], P["conv0.bias"],
                 padding=1)
    h = h + (emb @ P["affine.weight"].T + P["affine.bias"])[:, :, None, None]
    h = F.silu(group_norm(h, 4, P["norm1.weight"], P["norm1.bias"]))
    h = F.conv2d(h, P["conv1.weight"], P["conv1.bias"], padding=1)
    y = (h + F.conv2d(rs(x), P["skip.weight"], P["skip.bias"])) / math.sqrt(2)  # (B, 16, H', W')
    B, C, H, W = y.shape
    q, k, v = F.conv2d(group_norm(y, 4, P["norm2.weight"], P["norm2.bias"]), P["qkv.weight"], P["qkv.bias"]).reshape(
        B, 3, C, H * W).unbind(1)  # each (B, C, HW)
    a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C), dim=-1) @ v.transpose(1, 2)  # (B, HW, C)
    expected = (y + F.conv2d(a.transpose(1, 2).reshape(B, C, H, W), P["proj.weight"], P["proj.bias"])) / math.sqrt(2)
    torch.testing.assert_close(blk(x, emb), expected, rtol=1e-10, atol=1e-10)


def test_the_label_table_is_edms_scaled_one_hot_init_and_the_null_row_is_zero():
    net = small(num_classes=10)
    table = net.class_embed.weight  # (K + 1, N); EDM: Xavier-uniform Linear(K, N) of sqrt(K) one-hot, zero bias
    assert torch.equal(table[10], torch.zeros(16))
    assert table[:10].abs().max() <= math.sqrt(6 / (10 + 16)) * math.sqrt(10)


@pytest.mark.parametrize("kw, named", [
    ({"image_size": 18, "channel_mult": (1, 2, 2)}, "image_size=18"), ({"channel_mult": ()}, "model.channel_mult=[]"),
    ({"num_blocks": 0}, "model.num_blocks=0"), ({"dropout": 1.0}, "model.dropout=1.0"),
    ({"attn_resolutions": (4,)}, "model.attn_resolutions=[4]"), ({"model_channels": 36}, "model.model_channels=36"),
    ({"model_channels": 2}, "model.model_channels=2"),
    ({"num_classes": 0}, "model.num_classes=0"), ({"learn_sigma": "yes"}, "model.learn_sigma='yes'"),
    ({"context_dim": 64}, "model.context_dim=64"), ({"in_channels": 0}, "in_channels=0"),
])
def test_a_bad_option_is_one_line_naming_it(kw, named):
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
        DDPMpp(**{**SMALL, **kw})
    assert named in str(err.value) and "use " in str(err.value)


@pytest.mark.parametrize("kw, cond, words", [
    ({}, torch.tensor([0, 1]), "unconditional network"),
    ({"num_classes": 3}, (torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)), "no cross-attention"),
])
def test_a_condition_the_net_cannot_take_is_one_line(kw, cond, words):
    with pytest.raises(ConfigError, match=words):
        small(**kw)(torch.randn(2, 3, 16, 16), torch.zeros(2), cond)
