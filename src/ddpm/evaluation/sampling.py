"""Samples of a model as uint8 images, in batches: what FID, KID and IS are measured on."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data.pixels import to_uint8


@torch.no_grad()
def generate_images(
    module, num_samples: int, batch_size: int, generator: torch.Generator, sampler=None, progress: bool = False
) -> np.ndarray:
    """``num_samples`` uint8 (N, H, W, C) images from the EMA weights of ``module``, in batches.

    ``module`` is anything with ``sample(n, generator=, use_ema=, sampler=) -> (n, C, H, W) in [-1, 1]``
    and ``sample_shape`` (C, H, W), e.g. a ``DiffusionModule``; every batch draws its x_T and noise
    from ``generator`` in turn, so the images depend on the seed and the batch sizes.
    """
    batches = [batch_size] * (num_samples // batch_size) + ([num_samples % batch_size] if num_samples % batch_size else [])
    out = [
        to_uint8(module.sample(b, generator=generator, use_ema=True, sampler=sampler))
        for b in tqdm(batches, desc="sampling", disable=not progress)
    ]
    return np.concatenate(out) if out else np.zeros((0, *module.sample_shape[1:], module.sample_shape[0]), np.uint8)
