"""The noise-prediction U-Net of Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

Same layout as the original TensorFlow code (``diffusion_tf/models/unet.py``):
a PixelCNN++-style U-Net of wide ResNet blocks with GroupNorm(32), a sinusoidal
timestep embedding added inside every residual block, single-head self-attention
at the chosen resolutions and skip connections from every encoder block.

As in the original, the last layer of every residual branch (second conv of each
ResBlock, attention output projection) and the output conv are zero-initialised,
so each block starts as the identity and the untrained network outputs zeros.

Text conditioning (``context_dim``): as in Stable Diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", Sec. 3.3), every self-attention block (the attention
resolutions and the middle) is followed by cross-attention from the image tokens to the prompt's
tokens, and, as in Imagen (Saharia et al. 2022, Sec. 3.2), the prompt's pooled embedding is added
to the timestep embedding.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError, check_choice
from ddpm.nets.cross_attention import (NO_TEXT, TEXT_NEEDED, CrossAttention, check_context_dim, pooled_context,
                                       split_condition)
from ddpm.nets.embeddings import ClassEmbedding, timestep_embedding

GROUPS = 32


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Wide ResNet block conditioned on the timestep embedding (added after the first conv).

    With ``scale_shift`` the embedding gives a per-channel (scale, shift) applied after the second GroupNorm,
    h = norm(h) (1 + scale) + shift (improved-diffusion's ``use_scale_shift_norm``, Nichol & Dhariwal 2021):
    added before that norm (DDPM's block), the embedding is a per-channel constant that GroupNorm removes
    wherever a group holds one channel (32 channels, 32 groups), so such a block does not see t or the label.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, scale_shift: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(
            norm(out_ch), nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)  # (B, out_ch, H, W)
        e = self.emb_proj(emb)[:, :, None, None]  # (B, out_ch or 2 out_ch, 1, 1) broadcast
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            return self.skip(x) + self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        return self.skip(x) + self.out_layers(h + e)  # (B, out_ch, H, W)


class CrossAttnBlock(nn.Module):
    """x + CrossAttention(GroupNorm(x) as HW tokens, prompt tokens): heads of width 32 (C / 32 heads).

    The output projection is zero-initialised, so the block starts as the identity."""

    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.attn = CrossAttention(channels, context_dim, channels // GROUPS)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        h = self.attn(h, context, mask)  # (B, HW, C); context (B, L, Dc), mask (B, L)
        return x + h.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection; in a text net (``cross`` set by
    the U-Net) followed by cross-attention to the prompt."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        self.cross: CrossAttnBlock | None = None

    def forward(self, x: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)  # (B, 3, C, HW)
        q, k, v = qkv.transpose(2, 3).unsqueeze(2).unbind(1)  # each (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), softmax(q k^T / sqrt(C)) v
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        x = x + self.proj(h)
        if self.cross is not None and context is not None:
            x = self.cross(x, *context)  # (B, C, H, W)
        return x


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class EmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to its ResBlocks and the prompt to its AttnBlocks."""

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, context: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttnBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """DDPM noise-prediction U-Net (Ho et al. 2020): maps (x_t, t) to a tensor shaped like x_t.

    Args:
        image_size: height = width of the input; must survive ``len(channel_mult) - 1`` halvings.
        in_channels: image channels, also the number of output channels (twice that with ``learn_sigma``).
        base_channels: channels at full resolution; also the timestep-embedding dimension.
        channel_mult: channel multiplier per resolution level (one level per entry).
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (in pixels) at which self-attention follows each ResBlock.
        dropout: dropout probability inside the ResBlocks.
        num_classes: None: unconditional (exactly the parameters of the plain DDPM U-Net). K: a
            class-conditional net with ``class_embed``, a learned (K + 1, 4 * base_channels) table
            whose row K is the null class; the label's row is added to the timestep embedding
            (as in Dhariwal & Nichol 2021 and the classifier-free guidance of Ho & Salimans 2022).
        context_dim: None: no text. Dc (the text encoder's ``dim``): a text-conditional net whose
            ``cond`` is a prompt (embeddings (B, L, Dc), mask (B, L) bool): every self-attention block
            is followed by a ``CrossAttnBlock`` (zero-initialised output: the identity at init), and
            ``context_proj``, Linear(Dc, 4 * base_channels) of the mean of the real tokens, is added to
            the timestep embedding. Excludes ``num_classes``; the null condition is the encoded empty
            prompt. These layers are drawn after all others, so the other weights equal the
            unconditional net's of the same seed.
        learn_sigma: output 2C channels, the usual prediction and then the v of a learned reverse
            variance (Nichol & Dhariwal 2021; ``Denoiser(variance="learned_range")``). False: the plain
            net, its parameters and initial weights unchanged.
        patch_size: p > 1 folds each p x p patch of pixels into channels before the first conv (space-to-depth,
            ``pixel_unshuffle``: (C, H, W) -> (C p^2, H/p, W/p)) and unfolds the output conv's C p^2 channels
            back (``pixel_shuffle``), the patchify of ViT/DiT in front of a U-Net: every layer runs at 1/p of
            the resolution, p^2 fewer FLOPs for nearly the same parameters. ``attn_resolutions`` and the
            downsampling count from image_size / p. 1 (the default): the plain net, unchanged.
        scale_shift_norm: the embedding scales and shifts each ResBlock's second GroupNorm (``ResBlock``);
            False (the default): DDPM's block, in which 32-channel levels do not see the embedding.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int | None = None,
        context_dim: int | None = None,
        learn_sigma: bool = False,
        patch_size: int = 1,
        scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(scale_shift_norm, bool):
            raise ConfigError(f"model.scale_shift_norm={scale_shift_norm!r} is not allowed: use true or false")
        res_block = functools.partial(ResBlock, scale_shift=scale_shift_norm)
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or image_size % patch_size:
            raise ConfigError(f"model.patch_size={patch_size!r} is not allowed: use 1 (no patches) or a positive "
                              f"integer that divides image_size={image_size}, e.g. 2")
        p = self.patch_size = patch_size
        _validate(image_size // p, in_channels, base_channels, channel_mult, num_res_blocks, attn_resolutions, dropout)
        self.image_size, self.in_channels, self.base_channels = image_size, in_channels, base_channels

        ch, emb_ch = base_channels, 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        # Encoder: every entry produces one skip connection for the decoder.
        self.down = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels * p * p, ch, 3, padding=1))])
        skip_chs, res = [ch], image_size // p
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, base_channels * mult, emb_ch, dropout)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(AttnBlock(ch))
                self.down.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(EmbedSequential(Downsample(ch)))
                skip_chs.append(ch)
                res //= 2

        self.middle = EmbedSequential(
            res_block(ch, ch, emb_ch, dropout), AttnBlock(ch), res_block(ch, ch, emb_ch, dropout)
        )

        # Decoder: num_res_blocks + 1 ResBlocks per level, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for block in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_chs.pop(), base_channels * mult, emb_ch, dropout)]
                ch = base_channels * mult
                if res in attn_resolutions:
                    layers.append(AttnBlock(ch))
                if level != 0 and block == num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(EmbedSequential(*layers))

        self.learn_sigma = check_choice("model.learn_sigma", learn_sigma, (True, False))
        out_channels = 2 * in_channels if learn_sigma else in_channels
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, out_channels * p * p, 3, padding=1)))
        # Built last, so an unconditional net draws its initial weights exactly as before.
        self.num_classes = ClassEmbedding.check(num_classes)
        if num_classes is not None:
            self.class_embed = ClassEmbedding(num_classes, emb_ch)
        self.context_dim = check_context_dim(context_dim, num_classes, "a U-Net")
        if context_dim is not None:
            for block in self.modules():
                if isinstance(block, AttnBlock):  # encoder, middle, decoder order
                    block.cross = CrossAttnBlock(block.qkv.in_channels, context_dim)
            self.context_proj = nn.Linear(context_dim, emb_ch)  # pooled prompt -> timestep embedding

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        """Predict from x (B, C, H, W) at timesteps t (B,) (integer or float) a tensor (B, C, H, W).

        ``cond``: class labels (B,) in [0, num_classes] (num_classes = the null class) of a
        class-conditional net, None: the null class; a text net's prompt (embeddings (B or 1, L,
        context_dim), mask (B or 1, L) bool), the null condition being the encoded empty prompt.
        An unconditional net takes no ``cond``.
        """
        t = t.expand(x.shape[0])  # (B,), also accepts a scalar timestep
        emb = self.time_embed(timestep_embedding(t, self.base_channels))  # (B, 4 * base)
        labels, context = split_condition(cond)
        if self.context_dim is not None:
            context = self._check_text(context, labels, x.shape[0])  # (B, L, Dc), (B, L)
            emb = emb + self.context_proj(pooled_context(*context).to(emb.dtype))  # (B, 4 * base)
        elif context is not None:
            raise ConfigError(NO_TEXT)
        elif self.num_classes is not None:
            emb = emb + self.class_embed(labels, x.shape[0], x.device)  # (B, 4 * base)
        elif labels is not None:
            raise ConfigError(ClassEmbedding.UNCONDITIONAL)
        skips = []
        h = x if self.patch_size == 1 else F.pixel_unshuffle(x, self.patch_size)  # (B, C p^2, H/p, W/p)
        for block in self.down:
            h = block(h, emb, context)  # (B, C_l, H_l, W_l)
            skips.append(h)
        h = self.middle(h, emb, context)  # (B, C_last, H_last, W_last)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # (B, C_l, H_l, W_l)
        out = self.out(h)  # (B, C, H, W), or (B, 2C, H, W) with learn_sigma; times p^2 at H/p, W/p
        return out if self.patch_size == 1 else F.pixel_shuffle(out, self.patch_size)

    def _check_text(
        self, context: tuple[Tensor, Tensor] | None, labels: Tensor | None, batch: int
    ) -> tuple[Tensor, Tensor]:
        """A text net's prompt as (embeddings (B, L, Dc), mask (B, L)); a batch-1 prompt is shared by all."""
        if context is None:
            given = "class labels" if labels is not None else "cond=None"
            raise ConfigError(TEXT_NEEDED.format(self.context_dim, given))
        emb, mask = context
        if emb.ndim != 3 or emb.shape[-1] != self.context_dim or mask.shape != emb.shape[:2] \
                or emb.shape[0] not in (1, batch):
            raise ConfigError(f"text condition of shapes {tuple(emb.shape)} and mask {tuple(mask.shape)} is not "
                              f"allowed: use embeddings ({batch}, L, {self.context_dim}) and a mask ({batch}, L)")
        return emb.expand(batch, -1, -1), mask.expand(batch, -1)


def _validate(
    image_size: int,
    in_channels: int,
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    dropout: float,
) -> None:
    if not channel_mult or any(m < 1 for m in channel_mult):
        raise ConfigError(
            f"channel_mult={channel_mult} is not allowed: use one or more positive integers, e.g. (1, 2, 2, 2)"
        )
    if in_channels < 1:
        raise ConfigError(f"in_channels={in_channels} is not allowed: use a positive integer (1 for grey, 3 for RGB)")
    if image_size < 1:
        raise ConfigError(f"image_size={image_size} is not allowed: use a positive integer")
    n_down = len(channel_mult) - 1
    if image_size % 2**n_down:
        raise ConfigError(
            f"image_size={image_size} cannot be downsampled {n_down} time{'s' * (n_down > 1)} by the U-Net "
            f"(channel_mult has {len(channel_mult)} levels): use a multiple of {2**n_down}"
        )
    bad = sorted({w for w in (base_channels * m for m in (1, *channel_mult)) if w < 1 or w % GROUPS})
    if bad:
        raise ConfigError(
            f"base_channels={base_channels} with channel_mult={channel_mult} gives layers of {bad} channels, "
            f"which GroupNorm({GROUPS}) cannot split: "
            f"base_channels and base_channels * each mult must be multiples of {GROUPS}"
        )
    if num_res_blocks < 1:
        raise ConfigError(f"num_res_blocks={num_res_blocks} is not allowed: use at least 1")
    resolutions = [image_size // 2**level for level in range(len(channel_mult))]
    missing = [r for r in attn_resolutions if r not in resolutions]
    if missing:
        raise ConfigError(
            f"attn_resolutions={attn_resolutions} contains {missing}, which the U-Net never reaches: "
            f"choose from the resolutions {resolutions}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout} is not allowed: use a probability in [0, 1)")
