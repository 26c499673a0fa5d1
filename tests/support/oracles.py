"""Exact denoisers for data whose posterior mean E[x0 | x_t] has a closed form (shared by the sampler and
likelihood tests). Each is a network that predicts x0 exactly, seen through the real ``Denoiser``."""

import torch
from torch import nn

from ddpm.diffusion.denoiser import Denoiser


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


class GaussianMixturePosteriorMean:
    """The exact x0_hat = E[x0 | x_t] for data from a Gaussian mixture under any ``GaussianProcess``
    (``ddpm.diffusion.processes``): ``denoise(x_t (B, D), t (B,), cond=None) -> (B, D)``, the continuous-time
    samplers' denoiser, computed in float64 and returned in x_t's dtype.

    Data: component k ~ N(m_k, s_k^2 I) with weight w_k. With x_t = alpha x0 + sigma eps, component k's marginal
    is N(x; alpha m_k, v_k I), v_k = alpha^2 s_k^2 + sigma^2, so the posterior weight of k is
    r_k = softmax_k(log w_k - D/2 log v_k - |x - alpha m_k|^2 / (2 v_k)), and within k (Gaussian conditioning)
    E[x0 | x_t, k] = m_k + alpha s_k^2 / v_k (x - alpha m_k); x0_hat = sum_k r_k E[x0 | x_t, k].
    """

    def __init__(self, process, weights, means, stds):
        self.process = process
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # (K,)

    def __call__(self, x_t, t, cond=None):
        x, t = x_t.double(), t.double()
        a = self.process.alpha(t).view(-1, 1, 1)  # (B, 1, 1)
        s = self.process.sigma(t).view(-1, 1, 1)
        var_data = self.stds.view(1, -1, 1) ** 2  # (1, K, 1)
        v = a**2 * var_data + s**2  # (B, K, 1)
        diff = x[:, None, :] - a * self.means[None]  # (B, K, D)
        log_r = self.weights.log() - 0.5 * x.shape[1] * v[..., 0].log() - (diff**2).sum(-1) / (2 * v[..., 0])
        r = torch.softmax(log_r, dim=1)[..., None]  # (B, K, 1)
        posterior_means = self.means[None] + a * var_data / v * diff  # (B, K, D)
        return (r * posterior_means).sum(1).to(x_t.dtype)
