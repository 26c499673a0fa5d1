"""The Diffusion Transformer (DiT) of Peebles & Xie 2023, "Scalable Diffusion Models with Transformers".

Same layout as the authors' code (facebookresearch/DiT, ``models.py``), without the learned variance:

- patchify: a ``p x p`` convolution of stride ``p`` turns a (C, H, W) image into T = (H/p)(W/p)
  tokens of width D, plus a fixed 2-D sine-cosine position embedding (Sec. 3.2);
- conditioning vector c = MLP(sinusoidal(t)) + class embedding (K + 1 rows, the last one the null
  class of classifier-free guidance, as in the paper's ``LabelEmbedder``);
- ``depth`` adaLN-Zero blocks (Sec. 3.2, "adaLN-Zero block"): c regresses a shift, a scale and a
  gate for the attention and the MLP sub-blocks; the regressing layer is zero-initialised, so every
  gate is 0 and every block starts as the identity;
- a final adaLN layer and a zero-initialised linear decoder to p * p * C values per token, then
  unpatchify: the untrained network outputs zeros.

Its output has the input's shape (eps, x0 or v prediction); the paper's learned variance (2C output
channels) is not built here. Options, all off by default (the paper's DiT): U-ViT long skips (Bao et
al. 2023), a class-table initialisation for short runs, and text conditions through cross-attention and a pooled prompt (PixArt-alpha, Chen et al. 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError, check_choice
from ddpm.nets.cross_attention import (NO_TEXT, TEXT_NEEDED, CrossAttention, check_context_dim, pooled_context,
                                       split_condition)
from ddpm.nets.embeddings import ClassEmbedding, timestep_embedding

FREQ_DIM = 256  # width of the sinusoidal timestep features fed to the timestep MLP (as in DiT)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """MAE/DiT 1-D sine-cosine embedding: ``pos`` (M,) -> (M, dim), [sin(pos w) | cos(pos w)],
    w_i = 10000^(-i / (dim / 2)) for i < dim / 2."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))  # (dim/2,)
    out = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, dim)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D position embedding of a ``grid x grid`` token grid, row-major: (grid^2, dim).

    Half the channels encode the column (x), half the row (y), as in the authors'
    ``get_2d_sincos_pos_embed`` (which takes the grid as meshgrid(w, h), so x comes first)."""
    coords = torch.arange(grid, dtype=torch.float64, device="cpu")  # on the CPU also under torch.device("meta")
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # each (grid, grid); token k = (y, x) row-major
    emb = torch.cat([sincos_1d(dim // 2, xs.flatten()), sincos_1d(dim // 2, ys.flatten())], dim=1)  # (T, dim)
    return emb.float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, T, D) * (1 + scale (B, D)) + shift (B, D), per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, T, D)


class Attention(nn.Module):
    """Multi-head self-attention (timm's ``Attention``: one qkv linear, one output projection)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads)  # (B, T, 3, h, D/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, D/h)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, D/h), softmax(q k^T / sqrt(D/h)) v
        return self.proj(h.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class DiTBlock(nn.Module):
    """adaLN-Zero Transformer block: x + gate * f(modulate(LN(x))) for f = attention, then MLP; with a
    ``context_dim``, a cross-attention sub-block between them (PixArt-alpha, Chen et al. 2023, Sec. 2.3):
    x + CrossAttention(LN_c(x), context, mask), its output projection zero-initialised."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if context_dim is not None:
            self.norm_c = nn.LayerNorm(dim, eps=1e-6)  # affine: no adaLN modulation on this sub-block
            self.cross_attn = CrossAttention(dim, context_dim, num_heads)

    def forward(self, x: Tensor, c: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # x (B, T, D), c (B, D) -> six (B, D) vectors; context: (embeddings (B, L, Dc), mask (B, L) bool)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, T, D)
        if context is not None:
            x = x + self.cross_attn(self.norm_c(x), *context)  # (B, T, D)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, T, D)


class FinalLayer(nn.Module):
    """adaLN (shift and scale from c, no gate) and a linear map to p * p * C values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p * p * C)


class DiT(nn.Module):
    """Diffusion Transformer ``net(x (B, C, H, W), t (B,), cond=None) -> (B, C, H, W)``."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        patch_size: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        long_skip: bool = False,
        class_embed_std: float = 0.02,
        context_dim: int | None = None,
        learn_sigma: bool = False,
    ) -> None:
        """
        Args:
            image_size: side H = W of the (square) images; ``patch_size`` must divide it.
            in_channels: C, also the output channels (one prediction per input value; 2C with ``learn_sigma``).
            patch_size: p; the image becomes (H / p)^2 tokens. The paper's DiT-S/2 has p = 2.
            hidden_size: token width D (S: 384, B: 768, L: 1024, XL: 1152); ``num_heads`` divides it.
            depth: number of adaLN-Zero blocks (12 for S and B).
            num_heads: attention heads (S: 6, B: 12).
            mlp_ratio: MLP hidden width / D.
            num_classes: None: unconditional. K: class-conditional, with a learned (K + 1, D) table
                whose row K is the null class used for classifier-free guidance.
            long_skip: U-ViT long skips (Bao et al. 2023, "All are Worth Words", Sec. 3): the outputs of
                the first ``depth // 2`` blocks are concatenated to the inputs of the mirrored last
                ``depth // 2`` blocks, and a Linear(2D, D) maps them back to width D (a middle block,
                for odd depth, gets none). Off: the paper's DiT.
            class_embed_std: standard deviation of the class table's N(0, s^2) initialisation. The
                authors' 0.02 suits their 400k-step runs; within a few hundred steps the timestep
                embedding grows to norm ~30 while the class rows stay near norm 1, so the label barely
                moves c. 1.0 (PyTorch's default, as the U-Net's table) lets it count from the start.
            context_dim: None: no text. Dc: a text-conditional net (``cond`` = (embeddings (B, L, Dc),
                mask (B, L) bool)): every block gets a cross-attention sub-block over the prompt's
                tokens (PixArt-alpha), and the mean of the real tokens, Linear(Dc, D), is added to c
                (a pooled text embedding, as in Imagen and SD-XL). Excludes ``num_classes``.
            learn_sigma: output 2C channels, the prediction and then the v of a learned reverse variance
                (Nichol & Dhariwal 2021, as the paper's DiT; ``Denoiser(variance="learned_range")``).
                False: the plain net, its parameters and initial weights unchanged.
        """
        super().__init__()
        check_args(image_size, in_channels, patch_size, hidden_size, depth, num_heads, mlp_ratio)
        self.in_channels, self.patch_size, self.grid = in_channels, patch_size, image_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        # A buffer, not a parameter: it is fixed (not trained) and a function of the constructor's
        # arguments alone. Not persistent: checkpoints stay free of it and it is rebuilt on load.
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid)[None], persistent=False)  # (1, T, D)
        self.t_embedder = nn.Sequential(nn.Linear(FREQ_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.context_dim = check_context_dim(context_dim, num_classes, "a DiT")
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim) for _ in range(depth))
        self.learn_sigma = check_choice("model.learn_sigma", learn_sigma, (True, False))
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        if not isinstance(long_skip, bool):
            raise ConfigError(f"model.long_skip={long_skip!r} is not allowed: use true or false")
        # skip_linears[j] feeds block depth - depth // 2 + j with the output of block depth // 2 - 1 - j
        self.skip_linears = nn.ModuleList(nn.Linear(2 * hidden_size, hidden_size) for _ in range(depth // 2 if long_skip else 0))
        self.num_classes = ClassEmbedding.check(num_classes)
        if isinstance(class_embed_std, bool) or not isinstance(class_embed_std, (int, float)) or not class_embed_std > 0:
            raise ConfigError(f"model.class_embed_std={class_embed_std!r} is not allowed: use a positive number (0.02: DiT's)")
        self.class_embed_std = float(class_embed_std)
        if num_classes is not None:
            self.class_embed = ClassEmbedding(num_classes, hidden_size)
        if context_dim is not None:
            self.context_embed = nn.Linear(context_dim, hidden_size)  # pooled prompt -> c
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The authors' initialisation: Xavier-uniform linears (the patch conv as a linear), N(0, 0.02)
        timestep MLP, N(0, class_embed_std^2) class table (theirs: 0.02), and zeros for every adaLN
        modulation, the output linear and the cross-attention's output projection."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight  # (D, C, p, p)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for layer in (self.t_embedder[0], self.t_embedder[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.num_classes is not None:
            nn.init.normal_(self.class_embed.weight, std=self.class_embed_std)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        for block in self.blocks:  # the cross-attention's zero output projection (the Xavier loop overwrote it)
            if self.context_dim is not None:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> tokens (B, T, D), position embedding added."""
        return self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, T, p * p * C) -> (B, C, H, W) (C: the output channels); token k = (row, col) row-major, values (p, p, C)."""
        B, p, g, C = x.shape[0], self.patch_size, self.grid, self.out_channels
        x = x.reshape(B, g, g, p, p, C)  # (B, gh, gw, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, g * p, g * p)  # (B, C, H, W)

    def condition(self, t: Tensor, cond, batch: int, device: torch.device) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The conditioning vector c (B, D): timestep MLP plus the class embedding or the pooled prompt;
        and the text context (embeddings (B, L, Dc), mask (B, L)) for the cross-attention, or None."""
        t = t.expand(batch)  # (B,), also accepts a scalar timestep
        c = self.t_embedder(timestep_embedding(t, FREQ_DIM))  # (B, D)
        labels, text = split_condition(cond)
        if self.context_dim is not None:
            if text is None:
                raise ConfigError(TEXT_NEEDED.format(self.context_dim, "class labels" if labels is not None else "cond=None"))
            emb, mask = text
            if emb.ndim != 3 or emb.shape[-1] != self.context_dim or mask.shape != emb.shape[:2]:
                raise ConfigError(f"text condition of shapes {tuple(emb.shape)} and mask {tuple(mask.shape)} is not allowed: "
                                  f"use embeddings (B, L, {self.context_dim}) and a mask (B, L)")
            text = emb.expand(batch, -1, -1), mask.expand(batch, -1)  # (B, L, Dc), (B, L): a batch-1 prompt is shared
            return c + self.context_embed(pooled_context(*text).to(c.dtype)), text  # (B, D)
        if text is not None:
            raise ConfigError(NO_TEXT)
        if self.num_classes is not None:
            c = c + self.class_embed(labels, batch, device)  # (B, D)
        elif labels is not None:
            raise ConfigError(ClassEmbedding.UNCONDITIONAL)
        return c, None

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        """``x`` (B, C, H, W), ``t`` (B,) timesteps; ``cond``: class labels (B,) in [0, num_classes]
        (num_classes = the null class) of a class-conditional net, None for the null class; for a text
        net (``context_dim``) the pair (embeddings (B, L, context_dim), mask (B, L) bool), the null
        condition being the encoded empty prompt. Returns (B, C, H, W)."""
        c, context = self.condition(t, cond, x.shape[0], x.device)  # (B, D)
        h = self.patchify(x)  # (B, T, D)
        n_skip, first_out = len(self.skip_linears), len(self.blocks) - len(self.skip_linears)
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= first_out:  # U-ViT: mirrored block's output, concatenated, back to width D
                h = self.skip_linears[i - first_out](torch.cat([h, skips.pop()], dim=-1))  # (B, T, 2D) -> (B, T, D)
            h = block(h, c, context)  # (B, T, D)
            if i < n_skip:
                skips.append(h)
        return self.unpatchify(self.final_layer(h, c))  # (B, C, H, W)


def check_args(image_size, in_channels, patch_size, hidden_size, depth, num_heads, mlp_ratio) -> None:
    """One ConfigError line for the first bad constructor argument."""
    for name, value in [("image_size", image_size), ("in_channels", in_channels), ("patch_size", patch_size),
                        ("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{name}={value!r} is not allowed: use a positive integer")
    if image_size % patch_size:
        raise ConfigError(
            f"model.patch_size={patch_size} does not divide image_size={image_size}: use a divisor of {image_size} "
            f"({', '.join(str(d) for d in range(1, image_size + 1) if image_size % d == 0)})"
        )
    if hidden_size % num_heads:
        raise ConfigError(f"model.num_heads={num_heads} does not divide hidden_size={hidden_size}: use a divisor of it")
    if hidden_size % 4:
        raise ConfigError(f"model.hidden_size={hidden_size} is not allowed: use a multiple of 4 (2-D sin-cos position embedding)")
    if not (isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool) and math.isfinite(mlp_ratio) and mlp_ratio > 0):
        raise ConfigError(f"model.mlp_ratio={mlp_ratio!r} is not allowed: use a positive number")
