"""Training batches through a DataLoader (worker processes), resumable mid-epoch with the same order and flips."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ddpm.data.device_batches import ResumableBatches


class LoaderBatches(ResumableBatches):
    """Shuffled batches of ``dataset`` loaded by a DataLoader's workers; resumable mid-epoch.

    The order, rank split and flips are those of :class:`ResumableBatches` (one (seed, epoch)
    permutation, rank r taking every W-th position, the last partial batch dropped; flips drawn per
    (seed, rank, epoch, batch)), decided in the main process: the DataLoader's batch sampler hands
    each worker the keys of a batch, ``index`` or, with ``hflip``, ``(index, flip)``, which
    :class:`~ddpm.data.images.RandomHFlip` obeys. So batches do not depend on worker seeds or on the
    number of workers, and equal those of :class:`~ddpm.data.device_batches.DeviceBatches` for an
    in-memory dataset. ``state_dict`` counts the batches this iterable handed to the training loop,
    not those the workers prefetched; after ``load_state_dict`` the next epoch of that number starts
    at the batch after the last one handed out.

    Args:
        dataset: map-style dataset of ``(image, label)``; with ``hflip``, one that takes ``(index, flip)``.
        batch_size, seed, rank, world_size, epoch: as :class:`ResumableBatches`.
        hflip: mirror images left-right at random (p=0.5).
        num_workers, pin_memory: DataLoader settings (workers persist across epochs).
    """

    def __init__(self, dataset: Dataset, batch_size: int, hflip: bool = False, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch: Callable[[], int] | None = None):
        super().__init__(len(dataset), batch_size, "cpu", seed, rank, world_size, epoch)
        self.hflip = hflip
        self._flip = torch.Generator()
        self._plan = (0, 0)  # (epoch, first batch) that the batch sampler serves next
        self.loader = DataLoader(dataset, batch_sampler=_BatchKeys(self), num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0)

    def batch(self, index: torch.Tensor, epoch: int, i: int) -> list:
        """The keys the dataset is asked for, for the items at ``index`` (B,)."""
        if not self.hflip:
            return index.tolist()
        return list(zip(index.tolist(), self.flips(epoch, i, len(index), self._flip).tolist()))

    def __iter__(self):
        epoch, start = self._plan = self.begin_epoch()
        for i, batch in enumerate(self.loader, start):  # the sampler reads _plan when the loader starts
            self.served(epoch, i)
            yield batch


class _BatchKeys:
    """The DataLoader's batch sampler (iterated in the main process): the keys of each batch of the planned epoch."""

    def __init__(self, owner: LoaderBatches):
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self):
        epoch, start = self.owner._plan
        for i, index in self.owner.batches(epoch, start):
            yield self.owner.batch(index, epoch, i)
