"""``FeatureStats``: the mean and covariance of a set of features (what FID compares), and a subset for KID."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError


@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of features, their count, and a subset (K, D) of the features for KID."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_features(cls, features: np.ndarray, kid_features: int | None = None, seed: int = 0) -> "FeatureStats":
        """Statistics of (N, D) features; keep all of them for KID, or a seeded subset of ``kid_features``."""
        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise ConfigError(f"FID needs at least 2 images, got {len(features)}")
        keep = features
        if kid_features is not None and kid_features < len(features):
            keep = features[np.random.RandomState(seed).choice(len(features), kid_features, replace=False)]
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), keep.astype(np.float32))

    @classmethod
    def from_moments(cls, total: np.ndarray, outer: np.ndarray, count: int, features=None) -> "FeatureStats":
        """From sum_i f_i (D,) and sum_i f_i f_i^T (D, D), as summed across processes."""
        mu = total / count
        return cls(mu, (outer - count * np.outer(mu, mu)) / (count - 1), count, features)

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write an .npz that ``load_npz`` (and pytorch-fid style tools: mu, sigma) read."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count)}
        if self.features is not None:
            arrays["features"] = self.features
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
