"""Embeddings shared by the networks: the sinusoidal features of a timestep (or of any scalar), and class labels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, DDPM ``get_timestep_embedding``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / (half - 1) * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2 * half)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


class ClassEmbedding(nn.Embedding):
    """A learned vector per class label plus one for the null class (label ``num_classes``).

    ``embed(labels (B,) int64 in [0, num_classes], batch, device) -> (B, dim)``; labels None means
    the null class for the whole batch (the unconditional model of classifier-free guidance, Ho &
    Salimans 2022, who train one network for both by dropping labels to this row).
    """

    UNCONDITIONAL = "cond= was given to an unconditional network (num_classes=None): set model.num_classes to condition on labels"

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    @staticmethod
    def check(num_classes: int | None) -> int | None:
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ConfigError(f"model.num_classes={num_classes!r} is not allowed: use null (unconditional) or a positive integer")
        return num_classes

    def forward(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:  # type: ignore[override]
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)  # (B,) null class
        return super().forward(labels.long().expand(batch))  # (B, dim)
