"""Training batches served from a copy of an in-memory dataset on the training device (no DataLoader)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm.data.images import TensorImageDataset
from ddpm.data.pixels import from_uint8


class DeviceBatches:
    """Shuffled training batches cut from an in-memory uint8 image tensor that lives on the device.

    For datasets that fit in device memory (MNIST, CIFAR-10: tens of MB as uint8), this replaces the
    DataLoader: no worker processes, no per-image Python, no host-to-device copy per step. Each epoch
    draws one permutation from a generator seeded by (seed, epoch), identical on every rank, and rank
    r takes positions r, r + W, r + 2W, ... of it (W ranks), as DistributedSampler does; the last
    partial batch is dropped. Scaling to [-1, 1] and the optional left-right flip (p=0.5, drawn per
    image from a per-rank generator) run on the device.
    """

    def __init__(
        self,
        dataset: TensorImageDataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        hflip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] | None = None,
    ):
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)  # (N, C, H, W) uint8
        self.labels = dataset.labels.to(self.device)  # (N,)
        self.max_value = dataset.max_value
        self.batch_size, self.hflip = batch_size, hflip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = epoch or self._count_epochs
        self._epochs_started = 0
        self._flip = torch.Generator(self.device).manual_seed(seed + 1_000_003 * (rank + 1))

    def _count_epochs(self) -> int:
        return self._epochs_started

    def __len__(self) -> int:
        return len(self.images) // self.world_size // self.batch_size

    def __iter__(self):
        epoch = self.epoch()
        self._epochs_started += 1
        shuffle = torch.Generator(self.device).manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.images), generator=shuffle, device=self.device)
        order = order[self.rank :: self.world_size]
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = from_uint8(self.images[index], self.max_value)  # (B, C, H, W) in [-1, 1]
            if self.hflip:
                flip = torch.rand(len(index), generator=self._flip, device=self.device) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            yield images, self.labels[index]
