"""Conditions a denoiser can be given, and the two operations classifier-free guidance needs of them.

A condition is one of
    None                      the unconditional model (the null class / the empty prompt)
    labels (B,) int64         class labels of a class-conditional net; label K = the null class
    TextCondition(emb, mask)  a text prompt per sample, already encoded: embeddings (B, L, D) and
                              mask (B, L) bool (True: a real token), consumed by cross-attention

Networks see a ``TextCondition`` as a plain 2-tuple ``(embeddings, mask)`` (the nets layer does not
import this one). Prompts (strings) are encoded by a text encoder (``ddpm.nets.text_encoders``)
in the training module, which owns the encoder; everything below it sees tensors only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor


class TextCondition(NamedTuple):
    """Encoded prompts: ``embeddings`` (B, L, D) float, ``mask`` (B, L) bool, True where a token is real."""

    embeddings: Tensor
    mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.embeddings.shape[0]

    def to(self, device: torch.device | str) -> "TextCondition":
        return TextCondition(self.embeddings.to(device), self.mask.to(device))

    def expand(self, batch: int) -> "TextCondition":
        """One prompt (1, L, D) repeated for a batch of ``batch``: (batch, L, D), no copy."""
        return TextCondition(self.embeddings.expand(batch, -1, -1), self.mask.expand(batch, -1))

    def select(self, index: Tensor | slice) -> "TextCondition":
        return TextCondition(self.embeddings[index], self.mask[index])

    def where(self, keep: Tensor, other: "TextCondition") -> "TextCondition":
        """Per sample: this prompt where ``keep`` (B,) is True, ``other`` (B or 1 prompts) elsewhere."""
        emb = torch.where(keep[:, None, None], self.embeddings, other.embeddings)  # (B, L, D)
        return TextCondition(emb, torch.where(keep[:, None], self.mask, other.mask))  # (B, L)


def as_text_condition(cond: Any) -> TextCondition | None:
    """``cond`` as a ``TextCondition`` if it is an (embeddings (B, L, D), mask (B, L)) pair, else None."""
    if isinstance(cond, TextCondition):
        return cond
    if isinstance(cond, (tuple, list)) and len(cond) == 2 and all(isinstance(c, Tensor) for c in cond) \
            and cond[0].ndim == 3 and cond[1].ndim == 2:
        return TextCondition(cond[0], cond[1].bool())
    return None


def cat_conditions(a: Any, b: Any) -> Any:
    """Two conditions of one kind stacked along the batch: labels (B1 + B2,), or prompts (B1 + B2, L, D)."""
    if isinstance(a, TextCondition):
        return TextCondition(torch.cat([a.embeddings, b.embeddings]), torch.cat([a.mask, b.mask]))
    return torch.cat([a, b])


def condition_to(cond: Any, device: torch.device) -> Any:
    return None if cond is None else cond.to(device)
