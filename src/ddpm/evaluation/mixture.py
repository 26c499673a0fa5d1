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
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from ddpm.data.points import gaussians8
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
