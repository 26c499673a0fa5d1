"""Images and statistics in .npz files: uint8 (N, H, W, C) images under ``images`` (the layout FID
tools read), or ``mu``/``sigma`` statistics as pytorch-fid and TTUR write them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError
from ddpm.evaluation.feature_stats import FeatureStats


def check_images(images: np.ndarray, source: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) is taken as grayscale."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ConfigError(
            f"{source} has dtype {images.dtype}: expected uint8 images (N, H, W, C) in 0..255, "
            "e.g. ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for x in [-1, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"{source} has shape {images.shape}: expected (N, H, W, C) with C = 1 or 3 (NHWC)")
    return images


def save_images_npz(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write uint8 NHWC images as ``images`` in an .npz (the layout FID tools read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=check_images(images))
    return path


def load_npz(path: str | os.PathLike) -> np.ndarray | FeatureStats:
    """Images (key ``images``, else the first array) or statistics (keys ``mu`` and ``sigma``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"'{path}' does not exist: give an .npz of uint8 NHWC images or of mu/sigma statistics")
    with np.load(path) as f:
        if "mu" in f.files and "sigma" in f.files:
            features = f["features"] if "features" in f.files else None
            count = int(f["count"]) if "count" in f.files else 0
            return FeatureStats(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), count, features)
        if not f.files:
            raise ConfigError(f"'{path}' holds no arrays")
        return check_images(f["images"] if "images" in f.files else f[f.files[0]], source=f"'{path}'")
