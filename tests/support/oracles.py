"""Exact denoisers for data whose posterior mean E[x0 | x_t] has a closed form (shared by the sampler and
likelihood tests). Each is a network that predicts x0 exactly, seen through the real ``Denoiser``."""

import torch
from torch import nn

from ddpm.diffusion.denoiser import Denoiser
from ddpm.evaluation.mixture import GaussianMixturePosteriorMean  # noqa: F401  (in src: the paths figure uses it)


class PointNet(nn.Module):
    """All data is one point: x0_hat = point, whatever x_t."""

    def __init__(self, point):
        super().__init__()
        self.point = torch.as_tensor(point, dtype=torch.float32)

    def forward(self, x_t, t):
        return self.point.to(x_t.device).expand_as(x_t)


class GaussianNet(nn.Module):
    """Data N(mu, std^2 I): E[x0 | x_t] = mu + sqrt(abar) std^2 / (abar std^2 + 1 - abar) (x_t - sqrt(abar) mu), in float64."""

    def __init__(self, sched, mu, std):
        super().__init__()
        self.sched, self.mu, self.std = sched, mu, std

    def forward(self, x_t, t):
        ab = self.sched.alphas_cumprod[t].view(-1, *[1] * (x_t.ndim - 1)).double()
        x = x_t.double()
        return (self.mu + ab.sqrt() * self.std**2 / (ab * self.std**2 + 1 - ab) * (x - ab.sqrt() * self.mu)).float()


def point_denoiser(sched, point, **options) -> Denoiser:
    """The exact denoiser when all data is one point; ``options`` are the Denoiser's (clip_denoised, variance)."""
    return Denoiser(PointNet(point), sched, prediction_type="x0", **options)


def gaussian_denoiser(sched, mu, std, **options) -> Denoiser:
    """The exact denoiser for data N(mu, std^2 I)."""
    return Denoiser(GaussianNet(sched, mu, std), sched, prediction_type="x0", **options)
