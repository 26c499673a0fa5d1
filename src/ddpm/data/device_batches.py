"""Training batches served from a copy of an in-memory dataset on the training device (no DataLoader)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm.data.images import TensorImageDataset
from ddpm.data.pixels import from_uint8


class ResumableBatches:
    """Shuffled batches of ``size`` indexed items, split across ranks, resumable mid-epoch.

    Each epoch draws one permutation from a generator seeded by (seed, epoch), identical on every
    rank, and rank r takes positions r, r + W, r + 2W, ... of it (W ranks), as DistributedSampler
    does; the last partial batch is dropped. ``state_dict`` is (epoch, batches served), which
    Lightning saves in every checkpoint of a fit (as for any train loader with a ``state_dict``);
    after ``load_state_dict`` the next epoch of that number starts where it stopped, with the order
    of the uninterrupted run. A subclass cuts a batch in :meth:`batch`; randomness there must be a
    function of (epoch, batch number) too.
    """

    def __init__(self, size: int, batch_size: int, device: torch.device | str = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch: Callable[[], int] | None = None):
        self.size, self.device = size, torch.device(device)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = epoch or self._count_epochs
        self._epochs_started = 0
        self._position = {"epoch": -1, "batch": 0}  # the epoch being served and the batches served of it
        self._resume_at: dict | None = None

    def _count_epochs(self) -> int:
        return self._epochs_started

    def __len__(self) -> int:
        return self.size // self.world_size // self.batch_size

    def state_dict(self) -> dict[str, int]:
        """{"epoch": the epoch being served, "batch": how many of its batches were served}."""
        return dict(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next ``iter`` of epoch ``state["epoch"]`` starts at batch ``state["batch"]``."""
        self._resume_at = dict(state)

    def batch(self, index: torch.Tensor, epoch: int, i: int):
        """Batch ``i`` of ``epoch``, the items at ``index`` (B,)."""
        raise NotImplementedError

    def begin_epoch(self) -> tuple[int, int]:
        """Start serving an epoch: (its number, the batch it starts at: 0, or where a resume stopped)."""
        epoch = self.epoch()
        self._epochs_started += 1
        resume, self._resume_at = self._resume_at, None
        return epoch, resume["batch"] if resume is not None and resume["epoch"] == epoch else 0

    def served(self, epoch: int, i: int) -> None:
        """Record that batch ``i`` of ``epoch`` was handed to the training loop."""
        self._position = {"epoch": epoch, "batch": i + 1}

    def batches(self, epoch: int, start: int = 0):
        """(i, index (B,)) for the batches ``start``, ``start + 1``, ... of ``epoch`` on this rank.

        One permutation of all items per epoch from a generator seeded by (seed, epoch), identical
        on every rank; this rank's share is positions rank, rank + W, ... of it.
        """
        shuffle = torch.Generator(self.device).manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=shuffle, device=self.device)
        order = order[self.rank :: self.world_size]
        for i in range(start, len(self)):
            yield i, order[i * self.batch_size : (i + 1) * self.batch_size]

    def flips(self, epoch: int, i: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) bool: which images of batch ``i`` of ``epoch`` to mirror (p=0.5), drawn from ``generator``
        seeded by (seed, rank, epoch, i), so any resume and any loader draw the same flips."""
        generator.manual_seed(hash((self.seed, self.rank, epoch, i)) % 2**63)  # host ints: no sync
        return torch.rand(n, generator=generator, device=generator.device) < 0.5

    def __iter__(self):
        epoch, start = self.begin_epoch()
        for i, index in self.batches(epoch, start):
            batch = self.batch(index, epoch, i)
            self.served(epoch, i)
            yield batch


class DeviceBatches(ResumableBatches):
    """Shuffled training batches cut from an in-memory uint8 image tensor that lives on the device.

    For datasets that fit in device memory (MNIST, CIFAR-10: tens of MB as uint8), this replaces the
    DataLoader: no worker processes, no per-image Python, no host-to-device copy per step. Order,
    rank split and resuming as :class:`ResumableBatches`. Scaling to [-1, 1] and the optional
    left-right flip (p=0.5, drawn per image from a generator seeded by (seed, rank, epoch, batch), so a
    resumed epoch draws the same flips) run on the device.
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
        super().__init__(len(dataset.images), batch_size, device, seed, rank, world_size, epoch)
        self.images = dataset.images.to(self.device)  # (N, C, H, W) uint8
        self.labels = dataset.labels.to(self.device)  # (N,)
        self.max_value = dataset.max_value
        self.hflip = hflip
        self._flip = torch.Generator(self.device)

    def batch(self, index: torch.Tensor, epoch: int, i: int):
        images = from_uint8(self.images[index], self.max_value)  # (B, C, H, W) in [-1, 1]
        if self.hflip:
            flip = self.flips(epoch, i, len(index), self._flip)  # (B,)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images, self.labels[index]
