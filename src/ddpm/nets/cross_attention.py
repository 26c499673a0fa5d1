"""Cross-attention from image tokens to a text condition (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.3): queries from the image features, keys and values
from the prompt's token embeddings, padding tokens masked out.

    CrossAttention(dim, context_dim, num_heads)(x (B, T, dim), context (B, L, Dc), mask (B, L)) -> (B, T, dim)

The output projection is zero-initialised, so a freshly added cross-attention layer leaves the
network's function unchanged (like DiT's adaLN-Zero gates). A prompt whose mask is all False (no
token at all) attends to nothing and contributes zeros; encoders give the empty prompt at least its
start/end tokens, so that case does not arise in normal use.

A text condition reaches a network as the pair ``(embeddings (B, L, Dc), mask (B, L) bool)``;
``split_condition`` tells it from class labels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError


def split_condition(cond: Any) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
    """(labels or None, (embeddings (B, L, Dc), mask (B, L) bool) or None) of a net's ``cond`` argument."""
    if cond is None:
        return None, None
    if isinstance(cond, (tuple, list)):
        emb, mask = cond
        return None, (emb, mask.bool())
    return cond, None


def pooled_context(emb: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens' embeddings: emb (B, L, Dc), mask (B, L) -> (B, Dc) (zeros for an empty mask)."""
    m = mask.to(emb.dtype)[..., None]  # (B, L, 1)
    return (emb * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, Dc)


class CrossAttention(nn.Module):
    """Multi-head attention of x's tokens over the context's tokens, via ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        B, T, D = x.shape
        L, h = context.shape[1], self.num_heads
        q = self.q(x).reshape(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
        k, v = self.kv(context.to(x.dtype)).reshape(B, L, 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, L, D/h)
        keep = mask.bool()[:, None, None, :]  # (B, 1, 1, L): True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, T, D/h)
        out = torch.where(keep.any(-1, keepdim=True), out, 0.0)  # an all-padding prompt: no contribution (not NaN)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


TEXT_NEEDED = ("a text-conditional network (model.context_dim={}) was given {}: pass (embeddings, mask) of a prompt "
               "(the encoded empty prompt for the null condition)")
NO_TEXT = ("a text condition (embeddings, mask) was given to a network without cross-attention "
           "(model.context_dim=null): set model.context_dim to the text encoder's dim")


def check_context_dim(context_dim, num_classes, net: str) -> int | None:
    """``context_dim`` if allowed: None or a positive integer, and not beside ``num_classes`` (``net``: the
    network's name for the message, e.g. "a DiT")."""
    if context_dim is None:
        return None
    if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
        raise ConfigError(f"model.context_dim={context_dim!r} is not allowed: use null (no text) or a positive integer")
    if num_classes is not None:
        raise ConfigError(f"model.context_dim={context_dim} and model.num_classes={num_classes} are both set: "
                          f"{net} conditions on class labels or on text, set one of them to null")
    return context_dim
