"""Samples of a model as uint8 images, in batches: what FID, KID and IS are measured on."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data.pixels import to_uint8


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """(N,) int64 labels 0, 1, ..., K-1, 0, 1, ...: equal counts per class (the first N % K classes one more)."""
    return torch.arange(num_samples, dtype=torch.long) % num_classes


@torch.no_grad()
def generate_images(
    module,
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    sampler=None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> np.ndarray:
    """``num_samples`` uint8 (N, H, W, C) images from the EMA weights of ``module``, in batches.

    ``module`` is anything with ``sample(n, generator=, use_ema=, sampler=, cond=, guidance_scale=)
    -> (n, C, H, W) in [-1, 1]`` and ``sample_shape`` (C, H, W), e.g. a ``DiffusionModule``; every
    batch draws its x_T and noise from ``generator`` in turn, so the images depend on the seed and
    the batch sizes. ``labels`` (N,): the class of each sample of a conditional model, sampled with
    guidance at ``guidance_scale`` (None: the module's); None: unconditional sampling.
    """
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    batches = [batch_size] * (num_samples // batch_size) + ([num_samples % batch_size] if num_samples % batch_size else [])
    starts = [int(s) for s in np.cumsum([0, *batches])]
    out = []
    for start, b in zip(tqdm(starts[:-1], desc="sampling", disable=not progress), batches):
        extra = {} if labels is None else {"cond": labels[start : start + b], "guidance_scale": guidance_scale}
        out.append(to_uint8(module.sample(b, generator=generator, use_ema=True, sampler=sampler, **extra)))
    return np.concatenate(out) if out else np.zeros((0, *module.sample_shape[1:], module.sample_shape[0]), np.uint8)
