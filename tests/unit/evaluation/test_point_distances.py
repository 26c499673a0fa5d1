"""Distances between 2-D point sets (ddpm.evaluation.point_distances): nearest-neighbour and MMD."""

import pytest
import torch

from ddpm.data.points import spiral
from ddpm.evaluation.point_distances import mmd, nn_distance


def test_distances_are_zero_for_a_set_and_itself_and_grow_with_a_shift():
    x = spiral(500, torch.Generator().manual_seed(0))
    assert nn_distance(x, x) == 0 and mmd(x, x) == pytest.approx(0, abs=1e-6)
    # The nearest neighbour of every shifted point is at most the shift away, and a shift of the
    # whole set by far more than its size is seen in full.
    assert 0 < nn_distance(x + 0.05, x) <= 0.05 * 2**0.5 + 1e-6
    assert nn_distance(x + torch.tensor([10.0, 0.0]), x) > 8
    assert mmd(x + 0.5, x) > mmd(x + 0.05, x) > 0
