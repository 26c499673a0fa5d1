"""The DDPM++ U-Net of Song et al. 2021 as EDM (Karras et al. 2022) trains it on CIFAR-10.

1. Source: "Score-Based Generative Modeling through Stochastic Differential Equations" (Song et al. 2021,
   Sec. 4.4 and Appendix H, "DDPM++"), in the re-implementation of "Elucidating the Design Space of
   Diffusion-Based Generative Models" (Karras et al. 2022, Appendix F.2; NVlabs/edm ``SongUNet`` with
   ``--arch=ddpmpp``): model_channels 128, channel_mult (2, 2, 2), 4 blocks a resolution, attention at 16x16,
   dropout 0.13, 55.73M parameters at 32x32 (55,732,739 here; tests/unit/nets/test_ddpmpp.py derives the count).
2. Noise embedding: the sinusoidal features [sin, cos] of c_noise at frequencies 10000^(-i / (N/2 - 1)),
   N = model_channels (EDM's ``PositionalEmbedding(endpoint=True)`` with its halves swapped, which is exactly
   ``timestep_embedding``), then Linear(N, 4N), SiLU, Linear(4N, 4N), SiLU: the embedding every block sees.
   A class label's learned row (width N) is added to the sinusoidal features before the MLP (EDM's
   ``map_label``); the null class (label ``num_classes``) has its own row, zero at init (EDM: the bias alone).
3. Block (EDM ``UNetBlock``, DDPM++ settings): h = conv3x3(resample(SiLU(GN(x)))); h = SiLU(GN(h + Linear(emb)));
   h = conv3x3(dropout(h)); x = (h + skip(x)) sqrt(1/2), skip = resample then a 1x1 conv where the width
   changes or the block resamples; with attention x = (x + proj(attn(GN(x)))) sqrt(1/2), one head.
   GroupNorm: min(32, C/4) groups, eps 1e-6. Resampling with the [1, 1] filter: 2x2 average pooling down,
   nearest-neighbour up.
4. Layout ("standard" encoder and decoder): a 3x3 conv, then per level (a down block below the top level and)
   ``num_blocks`` blocks; the middle is a block with attention and one without; per level upward (an up block
   below the bottom level and) ``num_blocks + 1`` blocks, each eating one encoder skip by concatenation,
   attention only in the last block of an attention level; GN, SiLU, 3x3 conv out.
5. Init as EDM: Xavier-uniform weights and zero biases; the last conv of each block, the attention output and
   the output conv at 1e-5 of that (nearly the identity at init); the attention's qkv at sqrt(0.2).
   Not built: EDM's augmentation conditioning (``augment_dim``, the labels of its geometric augmentations),
   NCSN++'s Fourier embedding and residual encoder, and the other resample filters.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError, check_choice
from ddpm.nets.cross_attention import split_condition
from ddpm.nets.embeddings import ClassEmbedding, timestep_embedding

SKIP_SCALE = math.sqrt(0.5)
NO_TEXT = ("a text condition (embeddings, mask) was given to the DDPM++ net, which has no cross-attention: "
           "use model=unet_* or dit_* with conditioning=text_*")


def init_layer(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Xavier-uniform weight times ``gain`` and a zero bias (EDM's ``init``, ``init_zero``, ``init_attn``)."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


def conv(in_ch: int, out_ch: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    return init_layer(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), gain)


class Resample(nn.Module):
    """The [1, 1] filter: 2x2 average pooling (``down``), nearest-neighbour doubling (``up``), or nothing."""

    def __init__(self, mode: str | None) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "down":
            return F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return x


class Block(nn.Module):
    """DDPM++'s residual block (docstring, 3), optionally resampling and followed by single-head attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, norm, resample: str | None = None,
                 attention: bool = False) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.resample = Resample(resample)
        self.norm0, self.conv0 = norm(in_ch), conv(in_ch, out_ch, 3)
        self.affine = init_layer(nn.Linear(emb_ch, out_ch))
        self.norm1, self.dropout = norm(out_ch), nn.Dropout(dropout)
        self.conv1 = conv(out_ch, out_ch, 3, gain=1e-5)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch or resample else nn.Identity()
        self.attention = attention
        if attention:
            self.norm2 = norm(out_ch)
            self.qkv = conv(out_ch, 3 * out_ch, 1, gain=math.sqrt(0.2))  # rows: q, k, v, each out_ch
            self.proj = conv(out_ch, out_ch, 1, gain=1e-5)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))  # (B, out, H', W'), H' = H/2, H or 2H
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))  # (B, out, H', W')
        h = self.conv1(self.dropout(h))  # (B, out, H', W')
        x = (h + self.skip(self.resample(x))) * SKIP_SCALE  # (B, out, H', W')
        if not self.attention:
            return x
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(B, 3, 1, C, H * W).transpose(3, 4).unbind(1)  # each (B, 1, HW, C)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        a = a.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return (x + self.proj(a)) * SKIP_SCALE  # (B, C, H, W)


class DDPMpp(nn.Module):
    """DDPM++ (Song et al. 2021) in EDM's configuration (Karras et al. 2022): maps (x, c_noise) to a tensor like x.

    Args:
        image_size: height = width of the input; must survive ``len(channel_mult) - 1`` halvings.
        in_channels: image channels, also the output channels (twice that with ``learn_sigma``).
        model_channels: N, the width of the noise features and of the first conv; the embedding is 4N wide.
        channel_mult: a level's width is N times its entry (EDM's CIFAR-10: (2, 2, 2), 256 channels throughout).
        num_blocks: blocks per level in the encoder (the decoder has one more per level).
        attn_resolutions: resolutions (pixels) with single-head self-attention.
        dropout: dropout before each block's second conv (EDM's CIFAR-10: 0.13).
        num_classes: None: unconditional. K: a learned (K + 1, N) label table, row K the null class (docstring, 2).
        context_dim: must be None: the net has no cross-attention for text (model=unet_* or dit_* have).
        learn_sigma: 2C outputs, the prediction and then the v of a learned variance (Nichol & Dhariwal 2021).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.13,
        num_classes: int | None = None,
        context_dim: int | None = None,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        resolutions = _validate(image_size, in_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                                dropout)
        if context_dim is not None:
            raise ConfigError(f"model.context_dim={context_dim!r} is not allowed: the DDPM++ net has no "
                              "cross-attention for text; use null (class labels or none), or model=unet_* / dit_*")
        self.learn_sigma = check_choice("model.learn_sigma", learn_sigma, (True, False))
        self.num_classes, self.context_dim = ClassEmbedding.check(num_classes), None
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels

        def norm(channels: int) -> nn.GroupNorm:
            groups = min(32, channels // 4)
            if channels % groups:
                raise ConfigError(f"model.model_channels={model_channels} with channel_mult={list(channel_mult)} gives "
                                  f"a {channels}-channel layer that GroupNorm({groups}) cannot split: use a multiple "
                                  "of 32 (or 4, 8, 16 for small nets), e.g. 128")
            return nn.GroupNorm(groups, channels, eps=1e-6)

        N, E = model_channels, 4 * model_channels
        block = lambda i, o, **kw: Block(i, o, E, dropout, norm, **kw)  # noqa: E731
        self.map0, self.map1 = init_layer(nn.Linear(N, E)), init_layer(nn.Linear(E, E))
        if num_classes is not None:  # EDM: Linear(K, N) of sqrt(K) one-hot, Xavier-uniform weight, zero bias
            self.class_embed = ClassEmbedding(num_classes, N)
            bound = math.sqrt(6 * num_classes / (num_classes + N))
            with torch.no_grad():
                self.class_embed.weight.uniform_(-bound, bound)[num_classes].zero_()

        # Encoder: every module's output is one skip for the decoder.
        self.enc = nn.ModuleList([conv(in_channels, N, 3)])
        skips, ch = [N], N
        for level, (res, mult) in enumerate(zip(resolutions, channel_mult)):
            if level:
                self.enc.append(block(ch, ch, resample="down"))
                skips.append(ch)
            for _ in range(num_blocks):
                self.enc.append(block(ch, N * mult, attention=res in attn_resolutions))
                ch = N * mult
                skips.append(ch)

        # Middle, then the decoder: a skip is concatenated before every block whose input is wider than the last.
        self.dec = nn.ModuleList([block(ch, ch, attention=True), block(ch, ch)])
        for level, (res, mult) in reversed(list(enumerate(zip(resolutions, channel_mult)))):
            if level != len(channel_mult) - 1:
                self.dec.append(block(ch, ch, resample="up"))
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec.append(block(ch + skips.pop(), N * mult, attention=attention))
                ch = N * mult
        out_channels = 2 * in_channels if learn_sigma else in_channels
        self.out_norm, self.out_conv = norm(ch), conv(ch, out_channels, 3, gain=1e-5)

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        """Predict from x (B, C, H, W) at noise inputs t (B,) (float c_noise, or integer timesteps) a (B, C, H, W).

        ``cond``: class labels (B,) in [0, num_classes] (num_classes = the null class) of a class-conditional
        net, None: the null class. An unconditional net takes no ``cond``; no net here takes a text prompt.
        """
        B = x.shape[0]
        t = t.expand(B)  # (B,), also accepts a scalar
        emb = timestep_embedding(t, self.model_channels).to(x.dtype)  # (B, N): [sin, cos]
        labels, context = split_condition(cond)
        if context is not None:
            raise ConfigError(NO_TEXT)
        if self.num_classes is not None:
            emb = emb + self.class_embed(labels, B, x.device).to(emb.dtype)  # (B, N)
        elif labels is not None:
            raise ConfigError(ClassEmbedding.UNCONDITIONAL)
        emb = F.silu(self.map1(F.silu(self.map0(emb))))  # (B, 4N)

        h, skips = self.enc[0](x), []  # (B, N, H, W)
        skips.append(h)
        for blk in self.enc[1:]:
            h = blk(h, emb)  # (B, C_l, H_l, W_l)
            skips.append(h)
        for blk in self.dec:
            if blk.in_ch != h.shape[1]:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C_l + C_skip, H_l, W_l)
            h = blk(h, emb)  # (B, C_l, H_l, W_l)
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C, H, W), or (B, 2C, H, W) with learn_sigma


def _validate(image_size: int, in_channels: int, model_channels: int, channel_mult: tuple[int, ...],
              num_blocks: int, attn_resolutions: tuple[int, ...], dropout: float) -> list[int]:
    """The resolution of each level, or a one-line ConfigError naming the bad value."""
    def bad_int(v, least: int = 1) -> bool:
        return isinstance(v, bool) or not isinstance(v, int) or v < least

    checks = [
        (bad_int(image_size), f"image_size={image_size!r}", "a positive integer, e.g. 32"),
        (bad_int(in_channels), f"in_channels={in_channels!r}", "a positive integer (1 for grey, 3 for RGB)"),
        (bad_int(model_channels, 4), f"model.model_channels={model_channels!r}", "an integer >= 4, e.g. 128"),
        (not channel_mult or any(bad_int(m) for m in channel_mult), f"model.channel_mult={list(channel_mult)}",
         "one or more positive integers, e.g. [2, 2, 2]"),
        (bad_int(num_blocks), f"model.num_blocks={num_blocks!r}", "a positive integer, e.g. 4"),
        (not 0.0 <= dropout < 1.0, f"model.dropout={dropout!r}", "a probability in [0, 1), e.g. 0.13"),
    ]
    for failed, what, allowed in checks:
        if failed:
            raise ConfigError(f"{what} is not allowed: use {allowed}")
    n_down = len(channel_mult) - 1
    if image_size % 2**n_down:
        raise ConfigError(f"image_size={image_size} cannot be halved {n_down} times by the DDPM++ net (channel_mult "
                          f"has {len(channel_mult)} levels): use a multiple of {2**n_down}")
    resolutions = [image_size >> level for level in range(len(channel_mult))]
    missing = [r for r in attn_resolutions if r not in resolutions]
    if missing:
        raise ConfigError(f"model.attn_resolutions={list(attn_resolutions)} contains {missing}, which the net never "
                          f"reaches: use some of its resolutions {resolutions}")
    return resolutions
