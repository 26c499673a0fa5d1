"""The training loss averaged over each logging window, overall and per range of t, without per-step syncs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LossByTimestep(nn.Module):
    """Running sums of the per-sample loss in ``buckets`` equal ranges of t between two logging steps.

    ``add`` runs every step and stays on the device; ``means`` is called at logging steps only, with
    a ``reduce`` that sums across ranks (the strategy's), and resets the sums. A loss made of named
    terms (the hybrid loss's ``terms``: ``mse`` and ``vb``) has each term summed the same way.
    """

    def __init__(self, buckets: int, num_timesteps: int):
        super().__init__()
        self.buckets, self.num_timesteps = buckets, num_timesteps
        self.register_buffer("sums", torch.zeros(buckets), persistent=False)
        self.register_buffer("counts", torch.zeros(buckets), persistent=False)

    def add(self, per_sample: Tensor, t: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        """per_sample (B,) losses at timesteps t (B,); ``terms``: named per-sample parts (B,) of the loss."""
        bucket = t * self.buckets // self.num_timesteps
        self.sums.index_add_(0, bucket, per_sample)
        self.counts.index_add_(0, bucket, torch.ones_like(per_sample))
        for name, values in (terms or {}).items():
            if f"sums_{name}" not in self._buffers:  # on the device of the first step, like the sums
                self.register_buffer(f"sums_{name}", torch.zeros_like(self.sums), persistent=False)
            self._buffers[f"sums_{name}"].index_add_(0, bucket, values.to(self.sums.dtype))

    def means(self, reduce=lambda x: x) -> dict[str, Tensor]:
        """{"train/loss": window mean, "train/loss_t<lo>-<hi>": mean per range of t, and for each term
        ``train/loss_<term>`` and ``train/loss_<term>_t<lo>-<hi>``}; resets the window."""
        counts = reduce(self.counts.clone())
        width = self.num_timesteps / self.buckets
        out = {}
        for prefix, buffer in [("train/loss", self.sums)] + [
            (f"train/loss_{name[5:]}", b) for name, b in self._buffers.items() if name.startswith("sums_")
        ]:
            sums = reduce(buffer.clone())
            out[prefix] = sums.sum() / counts.sum().clamp(min=1)
            per_bucket = sums / counts.clamp(min=1)
            for i in range(self.buckets):
                out[f"{prefix}_t{int(i * width)}-{int((i + 1) * width) - 1}"] = per_bucket[i]
            buffer.zero_()
        self.counts.zero_()
        return out


class LossByNoiseLevel(LossByTimestep):
    """``LossByTimestep`` for a continuous-time process (EDM, flow): ``buckets`` equal ranges of the flow time
    tau = nu / (1 + nu) in [0, 1) of the noise level nu = sigma / alpha (flow: tau = t itself; EDM: tau = sigma /
    (1 + sigma)), logged as ranges of nu: ``train/loss_sigma<lo>-<hi>`` (e.g. 10 buckets: 0-0.11, ..., 9-inf)."""

    def __init__(self, buckets: int, noise_level):
        super().__init__(buckets, buckets)
        self.noise_level = noise_level  # t (B,) -> nu (B,)

    def add(self, per_sample: Tensor, t: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        nu = self.noise_level(t.double())
        bucket = (nu / (1 + nu) * self.buckets).long().clamp(0, self.buckets - 1)  # (B,)
        super().add(per_sample, bucket, terms)

    def means(self, reduce=lambda x: x) -> dict[str, Tensor]:
        out = super().means(reduce)
        names = {f"_t{i}-{i}": f"_sigma{_level(i / self.buckets)}-{_level((i + 1) / self.buckets)}"
                 for i in range(self.buckets)}
        return {_renamed(k, names): v for k, v in out.items()}


def _level(tau: float) -> str:
    """The noise level nu = tau / (1 - tau) of a bucket edge, short: 0, 0.11, 0.25, ..., 9, inf."""
    return "inf" if tau >= 1 else f"{tau / (1 - tau):.3g}"


def _renamed(key: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key
