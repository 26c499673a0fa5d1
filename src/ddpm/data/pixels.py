"""Pixels: images as floats in [-1, 1] (what the models see) and as 8-bit levels (files, Inception).

The one pair of conversions between the two scales, inverse to each other on the 256 levels:

    to_uint8:   k = round((x + 1) * 127.5)      x (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)
    from_uint8: x = k * 2 / max_value - 1       levels 0..max_value, any layout -> float32 in [-1, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> uint8 (N, H, W, C) numpy array on the host (the layout of
    ``samples.npz`` and of FID tools): round((x + 1) * 127.5), clamped to [-1, 1] first."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: Tensor | np.ndarray, max_value: float = 255.0) -> Tensor:
    """Integer levels 0..max_value -> float32 in [-1, 1] of the same shape and layout:
    k * 2 / max_value - 1.

    Any layout: uint8 (N, H, W, C) as ``samples.npz`` holds them, (N, C, H, W) or (C, H, W) as
    datasets store them; permute before or after as needed. ``max_value`` is 255 for 8-bit images
    (16 for scikit-learn's digits). ``from_uint8`` of ``to_uint8(x)`` gives x back on the 256 levels.
    """
    images = torch.as_tensor(images)
    return images.float() * (2.0 / max_value) - 1.0
