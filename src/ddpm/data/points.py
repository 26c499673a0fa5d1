"""2-D point sets for toy diffusion, and the ``PointDataModule`` that batches them.

Every dataset lies inside [-1, 1]^2 (its noise-free shape within radius 0.9), the range the
denoiser clips x0_hat to.
"""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch
from torch import Tensor

from ddpm.data.device_batches import ResumableBatches
from ddpm.errors import ConfigError

# ---- datasets: (num_points, generator) -> (N, 2) points in [-1, 1]^2 ----------------------------


def spiral(num_points: int, generator: torch.Generator, noise: float = 0.03, turns: float = 1.25) -> Tensor:
    """Two interleaved spiral arms of ``turns`` turns each, from the origin out to radius 0.9."""
    u = torch.rand(num_points, generator=generator, dtype=torch.float64).sqrt()  # uniform along the arm's length
    theta = 2 * math.pi * turns * u + math.pi * torch.randint(0, 2, (num_points,), generator=generator)
    x = torch.stack([0.9 * u * theta.cos(), 0.9 * u * theta.sin()], dim=1)  # (N, 2)
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def swiss_roll(num_points: int, generator: torch.Generator, noise: float = 0.02) -> Tensor:
    """The 2-D swiss roll (scikit-learn's ``make_swiss_roll`` seen from above): t from 1.5 pi to 4.5 pi."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(num_points, generator=generator, dtype=torch.float64))
    x = torch.stack([t * t.cos(), t * t.sin()], dim=1) * (0.9 / (4.5 * math.pi))  # (N, 2), radius <= 0.9
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def moons(num_points: int, generator: torch.Generator, noise: float = 0.03) -> Tensor:
    """Two interleaving half circles (scikit-learn's ``make_moons``), centred and scaled to width 1.8."""
    angle = math.pi * torch.rand(num_points, generator=generator, dtype=torch.float64)
    lower = torch.randint(0, 2, (num_points,), generator=generator).bool()
    x = torch.stack([angle.cos(), angle.sin()], dim=1)  # (N, 2) upper moon
    x[lower] = torch.stack([1 - angle[lower].cos(), 0.5 - angle[lower].sin()], dim=1)
    x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 0.6  # x in [-1.5, 1.5] -> [-0.9, 0.9]
    return (x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)).float()


def gaussians8(
    num_points: int, generator: torch.Generator, std: float = 0.04, radius: float = 0.8, with_labels: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """A mixture of 8 equally weighted Gaussians evenly spaced on a circle, mode k at angle k pi / 4.

    ``with_labels``: also return each point's mode k (N,) int64 in 0..7, its class label (the same points).
    """
    modes = torch.randint(0, 8, (num_points,), generator=generator)  # (N,)
    k = modes.double()
    centres = radius * torch.stack([(k * math.pi / 4).cos(), (k * math.pi / 4).sin()], dim=1)  # (N, 2)
    points = (centres + std * torch.randn(centres.shape, generator=generator, dtype=torch.float64)).float()
    return (points, modes) if with_labels else points


class PointDataModule(L.LightningDataModule):
    """Shuffled batches of a fixed set of 2-D points, made from a seed when set up.

    Args:
        dataset: ``dataset(num_points, generator) -> (N, 2)`` (a Hydra ``_partial_`` of a builder above).
        num_points: size of the point set.
        seed: seed of the point set (batch order follows the global seed, as for images).
        batch_size: points per batch; batches are ``[x]`` with x of shape (B, 2), or ``[x, labels]``
            (labels (B,) int64) when the dataset gives labels (a builder returning (points, labels)).
        num_classes: the number of class labels the dataset gives (8 for gaussians8, its modes), for
            class-conditional models; None for unlabelled point sets.
    """

    def __init__(
        self, dataset: Callable[..., Tensor], num_points: int = 10_000, seed: int = 0, batch_size: int = 512,
        num_classes: int | None = None,
    ):
        super().__init__()
        if batch_size > num_points:
            raise ConfigError(f"data.batch_size={batch_size} is more than data.num_points={num_points}")
        self.build_dataset = dataset
        self.num_points, self.seed, self.batch_size = num_points, seed, batch_size
        self.num_classes = num_classes
        self.points: Tensor | None = None
        self.labels: Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int]:
        """The shape of one point, (2,)."""
        return (2,)

    def setup(self, stage: str | None = None) -> None:
        if self.points is None:
            points = self.build_dataset(self.num_points, torch.Generator().manual_seed(self.seed))
            self.points, self.labels = points if isinstance(points, tuple) else (points, None)  # (N, 2), (N,)
            if self.num_classes is not None and self.labels is None:
                raise ConfigError(f"data.num_classes={self.num_classes} but this point set has no labels: "
                                  "use data.num_classes=null (only data=gaussians8 is labelled)")
            if self.labels is not None and self.num_classes is not None and int(self.labels.max()) >= self.num_classes:
                raise ConfigError(f"data.num_classes={self.num_classes} but the point set has labels up to "
                                  f"{int(self.labels.max())}: labels must lie in [0, num_classes)")

    def train_dataloader(self) -> PointBatches:
        self.setup("fit")
        trainer = self.trainer
        return PointBatches(
            self.points, self.batch_size, labels=self.labels, seed=torch.initial_seed() % 2**62,
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
            epoch=(lambda: trainer.current_epoch) if trainer else None,
        )


class PointBatches(ResumableBatches):
    """Batches ``[x]``, x (B, 2), of a point set (``[x, labels]`` with labels (B,) when given): each
    gathered by one index tensor; resumable mid-epoch."""

    def __init__(self, points: Tensor, batch_size: int, labels: Tensor | None = None, **kwargs):
        super().__init__(len(points), batch_size, **kwargs)
        self.points, self.labels = points, labels

    def batch(self, index: Tensor, epoch: int, i: int) -> list[Tensor]:
        return [self.points[index]] if self.labels is None else [self.points[index], self.labels[index]]
