"""Reference statistics: the Inception statistics samples are compared with, from a training set or a file.

Statistics of a training set are computed once (split over the processes of a ``Shard``) and
cached as ``<cache_dir>/<dataset_key>.npz`` (mu, sigma, count and a subset of features for KID),
keyed by dataset, split, count and resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ddpm.data.pixels import to_uint8
from ddpm.errors import ConfigError
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, extract_features
from ddpm.evaluation.npz import load_npz


@dataclass
class Shard:
    """This process's part of a job over ``world`` processes; the defaults are a single process."""

    rank: int = 0
    world: int = 1
    all_sum: Callable[[Tensor], Tensor] = lambda t: t
    gather_rows: Callable[[Tensor, list], Tensor] = lambda t, counts: t  # concatenate each rank's first counts[r] rows

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Contiguous blocks of range(n): (starts, sizes) for every rank."""
        sizes = [n // self.world + (r < n % self.world) for r in range(self.world)]
        return [sum(sizes[:r]) for r in range(self.world)], sizes


def dataset_key(datamodule, count: int, split: str = "train") -> str:
    """``<dataset>-<split>-n<count>-<C>x<H>px``, the dataset as ``ImageDataModule.dataset_name`` names it
    (fixed datasets by name, folders by their root and its hash)."""
    return f"{datamodule.dataset_name}-{split}-n{count}-{datamodule.channels}x{datamodule.image_size}px"


def _dataset_uint8(dataset, indices: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """uint8 (len(indices), H, W, C) of ``dataset[i][0]`` (images (C, H, W) in [-1, 1])."""
    parts = []
    for i in range(0, len(indices), chunk):
        parts.append(to_uint8(torch.stack([dataset[int(j)][0] for j in indices[i : i + chunk]])))
    return np.concatenate(parts)


def reference_from_file(
    path: str | os.PathLike, extractor: Extractor, kid_features: int | None = None, batch_size: int = 100,
    device="cpu", progress: bool = False,
) -> FeatureStats:
    """The statistics an .npz holds (mu/sigma), or those of the uint8 images it holds (``kid_features``
    of them kept for KID; None: all)."""
    reference = load_npz(path)
    if isinstance(reference, FeatureStats):
        return reference
    features = extract_features(reference, extractor, batch_size, device, progress)["pool3"]
    return FeatureStats.from_features(features, kid_features)


def reference_statistics(
    datamodule, extractor: Extractor, count: int | None = None, cache_dir: str | os.PathLike | None = None,
    kid_features: int = 10000, batch_size: int = 100, device="cpu", progress: bool = False, shard: Shard = Shard(),
) -> FeatureStats:
    """Statistics of ``count`` training images of an ``ImageDataModule`` (all when None; a seeded
    random subset otherwise), read from ``cache_dir/<dataset_key>.npz`` when there, else computed
    (split over ``shard``) and cached.

    Flipping (``hflip``) is not applied: the reference is the data as stored.
    """
    dataset = datamodule.build_dataset(**datamodule.dataset_kwargs)
    n = len(dataset) if count is None else int(count)
    if not 2 <= n <= len(dataset):
        raise ConfigError(
            f"reference_count={count!r} is not allowed: use 2 to {len(dataset)} (the training set's size) or null for all"
        )
    path = Path(cache_dir).expanduser() / f"{dataset_key(datamodule, n)}.npz" if cache_dir else None
    found = torch.tensor(float(path is not None and path.is_file()))
    if shard.all_sum(found).item() == shard.world:  # every rank sees the file: all read it
        return load_npz(path)
    order = np.random.RandomState(0).permutation(len(dataset))[:n] if n < len(dataset) else np.arange(n)
    starts, sizes = shard.split(n)
    mine = order[starts[shard.rank] : starts[shard.rank] + sizes[shard.rank]]
    features = extract_features(_dataset_uint8(dataset, mine), extractor, batch_size, device, progress)["pool3"]
    features = torch.from_numpy(features).to(device)  # (this rank's n, D), float64
    total = shard.all_sum(features.sum(0)).cpu().numpy()
    outer = shard.all_sum(features.T @ features).cpu().numpy()
    # the KID subset is order[:k]: the first rows of the first ranks' blocks
    k = min(kid_features, n)
    kid_counts = [int(np.clip(k - s, 0, z)) for s, z in zip(starts, sizes)]
    kid = shard.gather_rows(features[: kid_counts[shard.rank]], kid_counts).cpu().numpy().astype(np.float32)
    stats = FeatureStats.from_moments(total, outer, n, kid)
    if path is not None and shard.rank == 0:
        stats.save(path)
    return stats
