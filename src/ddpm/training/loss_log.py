"""The training loss averaged over each logging window, overall and per range of t, without per-step syncs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LossByTimestep(nn.Module):
    """Running sums of the per-sample loss in ``buckets`` equal ranges of t between two logging steps.

    ``add`` runs every step and stays on the device; ``means`` is called at logging steps only, with
    a ``reduce`` that sums across ranks (the strategy's), and resets the sums.
    """

    def __init__(self, buckets: int, num_timesteps: int):
        super().__init__()
        self.buckets, self.num_timesteps = buckets, num_timesteps
        self.register_buffer("sums", torch.zeros(buckets), persistent=False)
        self.register_buffer("counts", torch.zeros(buckets), persistent=False)

    def add(self, per_sample: Tensor, t: Tensor) -> None:
        """per_sample (B,) losses at timesteps t (B,)."""
        bucket = t * self.buckets // self.num_timesteps
        self.sums.index_add_(0, bucket, per_sample)
        self.counts.index_add_(0, bucket, torch.ones_like(per_sample))

    def means(self, reduce=lambda x: x) -> dict[str, Tensor]:
        """{"train/loss": window mean, "train/loss_t<lo>-<hi>": mean per range of t}; resets the window."""
        sums, counts = reduce(self.sums.clone()), reduce(self.counts.clone())
        out = {"train/loss": sums.sum() / counts.sum().clamp(min=1)}
        per_bucket = sums / counts.clamp(min=1)
        width = self.num_timesteps / self.buckets
        for i in range(self.buckets):
            out[f"train/loss_t{int(i * width)}-{int((i + 1) * width) - 1}"] = per_bucket[i]
        self.sums.zero_()
        self.counts.zero_()
        return out
