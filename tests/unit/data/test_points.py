"""The 2-D toy datasets (ddpm.data.points): seeded, inside the samplers' range, served in batches."""

import pytest
import torch

from ddpm.data.points import PointDataModule, gaussians8, moons, spiral, swiss_roll
from ddpm.errors import ConfigError

DATASETS = [spiral, moons, swiss_roll, gaussians8]


@pytest.mark.parametrize("make", DATASETS, ids=lambda f: f.__name__)
def test_dataset_is_seeded_2d_and_inside_the_sampler_range(make):
    a, b = (make(500, torch.Generator().manual_seed(3)) for _ in range(2))
    c = make(500, torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0  # the samplers clip x0_hat to [-1, 1]
    assert a.std(dim=0).min() > 0.2  # spread over the square, not a blob


def test_datamodule_yields_batches_of_points_from_its_seed():
    dm = PointDataModule(spiral, num_points=1000, seed=1, batch_size=100)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 and all(b[0].shape == (100, 2) for b in batches)
    assert torch.equal(dm.points, spiral(1000, torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match="batch_size"):
        PointDataModule(spiral, num_points=10, batch_size=100)
