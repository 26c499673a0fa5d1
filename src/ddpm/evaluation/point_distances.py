"""Distances between two sets of points (N, D): how close toy-diffusion samples are to the data."""

from __future__ import annotations

import torch
from torch import Tensor


def nn_distance(x: Tensor, y: Tensor) -> float:
    """Symmetric mean nearest-neighbour (Chamfer) distance between point sets x (N, D) and y (M, D).

    1/2 (mean_i min_j |x_i - y_j| + mean_j min_i |x_i - y_j|), in the units of the points. The first
    term grows when samples leave the data (blur), the second when part of the data is left
    uncovered (collapse); for two draws of the same distribution both shrink with the sample size.
    """
    d = torch.cdist(x.double().flatten(1), y.double().flatten(1))  # (N, M)
    return 0.5 * (d.min(dim=1).values.mean() + d.min(dim=0).values.mean()).item()


def median_distance(x: Tensor) -> float:
    """The median pairwise Euclidean distance within x (N, D): the median-heuristic RBF bandwidth."""
    d = torch.cdist(x.double(), x.double())
    return d[torch.triu_indices(len(x), len(x), offset=1).unbind()].median().item()


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Maximum mean discrepancy between samples x (N, D) and y (M, D) under an RBF kernel.

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), k(a, b) = exp(-|a - b|^2 / (2 h^2)), the biased
    (V-statistic) estimate of Gretton et al. 2012, Eq. 5; returns MMD, the square root.
    ``bandwidth`` h defaults to the median pairwise distance of ``y``, the reference sample, so
    that every sample compared with the same reference is measured with the same kernel. At that
    width it sees the overall shape (collapse, pure noise), not the thickness of a spiral arm.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    h = median_distance(y) if bandwidth is None else bandwidth

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * h * h)).mean()

    return (k(x, x) + k(y, y) - 2 * k(x, y)).clamp(min=0).sqrt().item()
