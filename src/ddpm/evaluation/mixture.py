"""The exact denoiser of a Gaussian mixture, conditional and unconditional: a reference to check
classifier-free guidance against, and how 2-D samples are scored against the mode they were asked for.

Data: K equally weighted classes, class k ~ N(mu_k, std^2 I) (``data=gaussians8``: mode k at
angle k pi / 4 on a circle, the class is the mode). Under the forward process
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4) the marginal is again a mixture,

    p_t(x | k) = N(x; sqrt(abar_t) mu_k, v_t I),   v_t = abar_t std^2 + 1 - abar_t,
    p_t(x)     = (1/K) sum_k p_t(x | k),

so the score and the eps a perfect network predicts (eps*(x_t) = -sqrt(1 - abar_t) grad log p_t,
Song et al. 2021, "Score-Based Generative Modeling through SDEs") have a closed form:

    grad log p_t(x) = sum_k r_k(x) (sqrt(abar_t) mu_k - x) / v_t,
    r_k(x) = softmax_k(-|x - sqrt(abar_t) mu_k|^2 / (2 v_t))   (the posterior probability of class k),

with r = one-hot(k) for the class-conditional p_t(x | k). Computed in float64.

``GaussianMixturePosteriorMean`` is the same mixture's posterior mean E[x0 | x_t] on any
``GaussianProcess`` (VP, EDM, flow; unequal weights and stds): the exact denoiser of the continuous-time
samplers, and of the VP-versus-flow paths figure (``python -m ddpm.plots paths``).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from ddpm.data.points import gaussians8
from ddpm.diffusion.processes import GaussianProcess
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

_GAUSSIANS8 = inspect.signature(gaussians8).parameters  # the data's own defaults: std, radius


def circle_centres(num_modes: int = 8, radius: float = _GAUSSIANS8["radius"].default) -> Tensor:
    """(K, 2) float64 centres radius (cos 2 pi k / K, sin 2 pi k / K): ``data=gaussians8``'s modes in label order."""
    angle = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def nearest_mode(x: Tensor, centres: Tensor) -> Tensor:
    """(N,) int64 index of the centre (K, D) nearest to each point of x (N, D)."""
    return torch.cdist(x.double(), centres.double().to(x.device)).argmin(dim=1)


def fraction_on_mode(x: Tensor, labels: Tensor, centres: Tensor) -> float:
    """The fraction of samples x (N, D) whose nearest centre (K, D) is their requested label (N,)."""
    return (nearest_mode(x, centres) == labels.to(x.device)).double().mean().item()


class GaussianMixtureEps(nn.Module):
    """The exact eps prediction ``net(x_t (B, D), t (B,), cond=None) -> (B, D)`` for mixture data.

    ``cond`` holds class labels (B,) in [0, K]; the null class K (or ``cond=None``) gives the
    unconditional eps of the whole mixture, class k that of N(mu_k, std^2 I) alone (module
    docstring). Computed in float64, returned in x_t's dtype; use it with
    ``Denoiser(net, schedule, prediction_type="epsilon")`` like a trained conditional network.

    Args:
        centres: (K, D) the class means mu_k.
        std: the standard deviation of every class.
        schedule: the noise schedule (its float64 ``abar``).
    """

    def __init__(self, centres: Tensor, std: float, schedule: NoiseSchedule):
        super().__init__()
        if not std > 0 or centres.ndim != 2:
            raise ConfigError(f"std={std!r}, centres of shape {tuple(centres.shape)}: need std > 0 and centres (K, D)")
        self.num_classes = len(centres)
        self.std = float(std)
        self.register_buffer("centres", centres.double())  # (K, D)
        abar = torch.tensor([schedule.abar(t) for t in range(schedule.num_timesteps)], dtype=torch.float64)
        self.register_buffer("abar", abar)  # (T,)

    def score(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """grad_x log p_t(x | cond) (B, D) in float64; cond None or K: the mixture."""
        a = self.abar[t].unsqueeze(1)  # (B, 1)
        v = a * self.std**2 + 1 - a  # (B, 1)
        means = a.sqrt().unsqueeze(2) * self.centres.T  # (B, D, K): sqrt(abar) mu_k
        diff = means - x.double().unsqueeze(2)  # (B, D, K)
        logits = -(diff**2).sum(dim=1) / (2 * v)  # (B, K)
        if cond is not None:
            cond = cond.to(x.device).long()
            if cond.shape != t.shape or (cond < 0).any() or (cond > self.num_classes).any():
                K = self.num_classes
                raise ConfigError(f"class labels must be of shape ({len(t)},) in [0, {K}] ({K}: the null class)")
            one_class = torch.nn.functional.one_hot(cond.clamp(max=self.num_classes - 1), self.num_classes).bool()
            null = (cond == self.num_classes).unsqueeze(1)  # (B, 1)
            logits = logits.masked_fill(~(one_class | null), -math.inf)
        r = logits.softmax(dim=1)  # (B, K) posterior class weights r_k(x)
        return (diff * r.unsqueeze(1)).sum(dim=2) / v  # (B, D)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        sigma = (1 - self.abar[t]).sqrt().unsqueeze(1)  # (B, 1) sqrt(1 - abar_t)
        return (-sigma * self.score(x, t, cond)).to(x.dtype)  # eps* = -sqrt(1 - abar_t) grad log p_t


def gaussians8_eps(
    schedule: NoiseSchedule, std: float = _GAUSSIANS8["std"].default, radius: float = _GAUSSIANS8["radius"].default
) -> GaussianMixtureEps:
    """The exact eps network of ``data=gaussians8`` (8 modes, defaults of ``ddpm.data.points.gaussians8``)."""
    return GaussianMixtureEps(circle_centres(8, radius), std, schedule)


class GaussianMixturePosteriorMean:
    """The exact x0_hat = E[x0 | x_t] of a Gaussian mixture under any ``GaussianProcess``:
    ``denoise(x_t (B, D), t (B,), cond=None) -> (B, D)``, the continuous-time samplers' denoiser
    (``ddpm.diffusion.ode_samplers``), computed in float64 and returned in x_t's dtype.

    Data: component k ~ N(m_k, s_k^2 I) with weight w_k (s_k = 0: a point). With x_t = alpha x0 + sigma eps
    (Kingma et al. 2021, Eq. 1) component k's marginal is N(x; alpha m_k, v_k I), v_k = alpha^2 s_k^2 + sigma^2,
    so (Bayes, then Gaussian conditioning within k):

        1. r_k(x) = softmax_k(log w_k - D/2 log v_k - |x - alpha m_k|^2 / (2 v_k))   the posterior of k
        2. E[x0 | x_t, k] = m_k + alpha s_k^2 / v_k (x - alpha m_k)
        3. x0_hat = sum_k r_k E[x0 | x_t, k]

    Args:
        process: the ``GaussianProcess`` giving alpha(t), sigma(t).
        weights: (K,) positive mixture weights (normalised here).
        means: (K, D) the component means m_k.
        stds: (K,) the component standard deviations s_k >= 0.
    """

    def __init__(self, process: GaussianProcess, weights, means, stds):
        self.process = process
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # (K,)
        K = len(self.weights)
        if (self.means.ndim != 2 or self.means.shape[0] != K or self.stds.shape != (K,)
                or not bool((self.weights > 0).all()) or not bool((self.stds >= 0).all())):
            raise ConfigError(f"a mixture needs weights (K,) > 0, means (K, D), stds (K,) >= 0; got shapes "
                              f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(self.stds.shape)}")
        self.weights = self.weights / self.weights.sum()

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        x, t = x_t.double(), torch.as_tensor(t, device=x_t.device).double().expand(len(x_t))
        means, stds, weights = (v.to(x.device) for v in (self.means, self.stds, self.weights))
        a = self.process.alpha(t).view(-1, 1, 1)  # (B, 1, 1)
        s = self.process.sigma(t).view(-1, 1, 1)
        var_data = stds.view(1, -1, 1) ** 2  # (1, K, 1)
        v = a**2 * var_data + s**2  # (B, K, 1)
        diff = x[:, None, :] - a * means[None]  # (B, K, D)
        log_r = weights.log() - 0.5 * x.shape[1] * v[..., 0].log() - (diff**2).sum(-1) / (2 * v[..., 0])  # 1. (B, K)
        r = torch.softmax(log_r, dim=1)[..., None]  # (B, K, 1)
        posterior_means = means[None] + a * var_data / v * diff  # 2. (B, K, D)
        return (r * posterior_means).sum(1).to(x_t.dtype)  # 3. (B, D)


def gaussians8_posterior_mean(process: GaussianProcess, std: float = _GAUSSIANS8["std"].default,
                              radius: float = _GAUSSIANS8["radius"].default) -> GaussianMixturePosteriorMean:
    """The exact E[x0 | x_t] of ``data=gaussians8`` (8 equal modes, ``ddpm.data.points.gaussians8``'s defaults)
    on ``process``."""
    return GaussianMixturePosteriorMean(process, torch.ones(8), circle_centres(8, radius), torch.full((8,), std))
