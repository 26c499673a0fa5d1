"""Sample grids: a batch of images in [-1, 1] as one picture."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid


def image_grid(images: Tensor, min_side: int = 32, nrow: int | None = None) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1] of ``nrow`` images per row (None: about
    sqrt(N)); small images are upscaled (nearest)."""
    scale = max(1, math.ceil(min_side / images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    return make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
