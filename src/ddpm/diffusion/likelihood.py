"""Negative log-likelihood in bits/dim through the variational bound (Ho et al. 2020, Eq. 5).

    -log p(x_0) <= L_T + sum_{t>=1} L_{t-1} + L_0                 (paper notation, 1-based)
    L_T     = KL(q(x_T | x_0) || N(0, I))                         the prior term
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))       Gaussian KLs, one per step
    L_0     = -log p(x_0 | x_1)                                   the discretized Gaussian decoder (Eq. 13)

In this code timesteps are 0-based: the term at t = 0 is the decoder, evaluated at x_1 =
q_sample(x_0, t=0); the term at t >= 1 is the KL of the step out of t; the prior uses t = T - 1.
p(x_{t-1} | x_t) has mean mu~_t(x0_hat, x_t) and the denoiser's reverse variance (``fixed_small``
beta~_t, ``fixed_large`` beta_t or ``learned_range``: ``Denoiser.variance``), x0_hat clipped as the denoiser clips it
(``Denoiser.clip_denoised``), exactly as in sampling. Data are 8-bit images scaled
to [-1, 1]: 256 levels, bins of width 2/255. Everything is summed in nats over the pixels and
reported per dimension in bits: nats / (D ln 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.special import log_ndtr
from tqdm.auto import tqdm

from ddpm.diffusion.denoiser import Denoiser, DenoiserOutput
from ddpm.diffusion.schedules import NoiseSchedule, extract

BIN = 1.0 / 255.0  # half the width of one of the 256 intensity bins on [-1, 1]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _log_ndtr_diff(hi: Tensor, lo: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for hi > lo, taking the tail away from 0 so nothing cancels."""
    flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    hi, lo = torch.where(flip, -lo, hi), torch.where(flip, -hi, lo)
    log_hi = log_ndtr(hi)
    return log_hi + torch.log(-torch.expm1(log_ndtr(lo) - log_hi))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of 8-bit data x in [-1, 1] under N(mean, e^{2 log_scale}) binned to 256 levels   (DDPM Eq. 13).

    The bin of x is [x - 1/255, x + 1/255]; the first and last bins reach to -inf and +inf.
    Elementwise, in nats, computed in float64.
    """
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_std = torch.exp(-log_scale)
    hi, lo = inv_std * (x - mean + BIN), inv_std * (x - mean - BIN)
    return torch.where(
        x < -1 + BIN, log_ndtr(hi), torch.where(x > 1 - BIN, log_ndtr(-lo), _log_ndtr_diff(hi, lo))
    )


def _per_dim_bits(nats: Tensor) -> Tensor:
    """(B, ...) nats -> (B,) bits per dimension."""
    return nats.flatten(1).mean(dim=1) / math.log(2.0)


def prior_bpd(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,). Small for a good schedule (~1e-5 for DDPM's)."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, device=x0.device, dtype=torch.long)
    abar = extract(schedule.alphas_cumprod, t, x0.ndim).double()
    mean, logvar = abar.sqrt() * x0.double(), torch.log1p(-abar).expand_as(x0)
    return _per_dim_bits(normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)))


def vb_term_bpd(denoiser: Denoiser, x0: Tensor, t: Tensor, noise: Tensor, cond: Any = None) -> Tensor:
    """The bound's term at timestep t (B,): the decoder NLL where t = 0, the KL L_t elsewhere; bits/dim.

    Args:
        x0: (B, C, H, W) data on the 8-bit grid in [-1, 1].
        t: (B,) timesteps; noise: (B, C, H, W) the eps of x_t = q_sample(x0, t, noise).
    """
    x_t = denoiser.schedule.q_sample(x0, t, noise)
    return vb_term_from_output(denoiser.schedule, x0, x_t, t, denoiser(x_t, t, cond))


def vb_term_from_output(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, out: DenoiserOutput) -> Tensor:
    """``vb_term_bpd`` (B,) from a denoiser's output ``out`` at (x_t, t): differentiable in out, so the
    hybrid loss can train a learned variance through it. x0, x_t (B, C, H, W); t (B,). Math in float64."""
    x0_hat, _, logvar = out
    mean, _, _ = schedule.posterior(x0_hat, x_t, t)  # mu_theta(x_t, t)
    logvar = logvar.expand_as(x0)
    true_mean, _, true_logvar = schedule.posterior(x0, x_t, t)
    kl = normal_kl(true_mean.double(), true_logvar.expand_as(x0).double(), mean.double(), logvar.double())
    decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
    return torch.where(t == 0, _per_dim_bits(decoder), _per_dim_bits(kl))


@torch.no_grad()
def nll_bpd(
    denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None, progress: bool = False, cond: Any = None
) -> dict[str, Tensor]:
    """The full variational bound of a batch, with one fresh x_t per timestep.

    Returns (all in bits/dim): ``total`` (B,), ``prior`` (B,), ``decoder`` (B,), and ``terms``
    (B, T) where ``terms[:, 0]`` is the decoder and ``terms[:, t]`` the KL at t >= 1.
    """
    schedule = denoiser.schedule
    x0 = x0.float()  # (B, C, H, W)
    B, T = x0.shape[0], schedule.num_timesteps
    terms = torch.empty(B, T, dtype=torch.float64, device=x0.device)
    for t_int in tqdm(range(T - 1, -1, -1), desc="nll", disable=not progress, leave=False):
        t = torch.full((B,), t_int, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        terms[:, t_int] = vb_term_bpd(denoiser, x0, t, noise, cond)
    prior = prior_bpd(schedule, x0)
    return {"total": terms.sum(dim=1) + prior, "prior": prior, "decoder": terms[:, 0], "terms": terms}


def dataset_bpd(
    denoiser: Denoiser, dataset, num_images: int | None = None, batch_size: int = 100,
    generator: torch.Generator | None = None, device="cpu", progress: bool = False,
) -> dict[str, float | list[float]]:
    """The bound averaged over the first ``num_images`` (all when None) images of a dataset of
    (image in [-1, 1], label) pairs: ``nll_bpd`` and its ``prior``/``decoder`` parts, bits/dim, and
    ``nll_terms_bpd``: the T per-timestep terms averaged over the images (``nll_bpd`` is their sum
    plus the prior): where the bits go."""
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    sums = {"total": 0.0, "prior": 0.0, "decoder": 0.0}
    terms = torch.zeros(denoiser.schedule.num_timesteps, dtype=torch.float64)  # (T,)
    for start in tqdm(range(0, n, batch_size), desc="nll batches", disable=not progress):
        x0 = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, n))]).to(device)
        out = nll_bpd(denoiser, x0, generator)
        for key in sums:
            sums[key] += out[key].sum().item()
        terms += out["terms"].sum(dim=0).cpu()
    return {
        "nll_bpd": sums["total"] / n, "nll_prior_bpd": sums["prior"] / n, "nll_decoder_bpd": sums["decoder"] / n,
        "nll_num_images": n, "nll_terms_bpd": (terms / n).tolist(),
    }
