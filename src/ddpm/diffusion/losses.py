"""Training losses ``loss(denoiser, x0, generator, cond) -> (per-sample loss (B,), t (B,))``: the simple loss of
DDPM (optional min-SNR weighting), and Improved DDPM's hybrid and variational-bound losses.

A loss made of parts keeps the last call's ``terms`` ({name: (B,) detached}), which the training
module logs per range of t beside the loss (``training.loss_log.LossByTimestep``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.likelihood import vb_term_from_output
from ddpm.diffusion.schedules import extract
from ddpm.diffusion.resample import LossSecondMomentSampler, check_history
from ddpm.errors import ConfigError, check_choice


class SimpleLoss:
    """L_simple = E_{t, x_0, eps} || target - net(x_t, t) ||^2   (Ho et al. 2020, Eq. 14).

    The target is what the denoiser's network predicts (eps, x0 or v; ``Denoiser.prediction_type``).

    Args:
        min_snr_gamma: if set, weight each sample by the min-SNR-gamma rule of Hang et al. 2023
            (gamma=5 in the paper); None gives the unweighted simple loss.
    """

    def __init__(self, min_snr_gamma: float | None = None):
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ConfigError(f"min_snr_gamma={min_snr_gamma!r} is not allowed: use a positive number or null")
        self.min_snr_gamma = min_snr_gamma

    @staticmethod
    def check(denoiser: Denoiser) -> None:
        """A ConfigError when the denoiser has a learned variance, which L_simple does not train (the
        module calls this when it is built, before any step)."""
        if denoiser.learned:
            raise ConfigError("loss=simple does not train a learned variance (denoiser.variance=learned_range): "
                              "use loss=hybrid or loss=vlb, or a fixed variance with model.learn_sigma=false")

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None, cond: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the timesteps t (B,) they were drawn at; math in float32."""
        self.check(denoiser)
        schedule, prediction = denoiser.schedule, denoiser.parameterization
        x0 = x0.float()  # (B, C, H, W)
        t, eps, x_t = _noised(denoiser, x0, generator)
        out = denoiser.net_output(x_t, t, cond)
        target = prediction.target(schedule, x0, eps, t)
        loss = (out - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        if self.min_snr_gamma is not None:
            snr = extract(schedule.snr, t, 1)
            loss = loss * prediction.min_snr_weight(snr, self.min_snr_gamma)
        return loss, t


def _noised(denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None, t: Tensor | None = None
            ) -> tuple[Tensor, Tensor, Tensor]:
    """t ~ U{0..T-1} (B,) (unless given), eps ~ N(0, I) and x_t = q_sample(x0, t, eps), drawn in that order."""
    schedule = denoiser.schedule
    if t is None:
        t = schedule.sample_timesteps(x0.shape[0], x0.device, generator)  # (B,)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    return t, eps, schedule.q_sample(x0, t, eps)


class HybridLoss:
    """L_hybrid = L_simple + lambda L_vlb   (Nichol & Dhariwal 2021, "Improved DDPM", Eq. 16), lambda = 0.001.

    For a net that learns its reverse variance (``Denoiser(variance="learned_range")``, 2C output
    channels): L_simple trains the first C channels (the mean), L_vlb the variance channels.

    L_vlb = L_0 + L_1 + ... + L_{T-1} (+ the constant prior), the bound summed over all T steps
    (their Eqs. 4-5). With one t ~ U{0..T-1} per sample, T L_t is its unbiased estimate, so the
    term added is lambda T L_t; L_t is the KL of the step out of t, or the discretized Gaussian
    decoder NLL at t = 0 (``likelihood.vb_term_from_output``), in bits per dimension (the mean over
    dimensions, like L_simple's MSE). This is improved-diffusion's ``RESCALED_MSE``: vb * T / 1000.
    Dropping the factor T (training on lambda L_t) would weigh the variance 1/T as much as the paper
    does (lucidrains' ``learned_gaussian_diffusion.py`` does that).

    Stop-gradient: L_vlb sees the mean channels detached, so the mean's gradient is L_simple's alone
    ("we apply a stop-gradient to the mu output for the L_vlb term", Sec. 3.1). x0_hat is not clipped
    in L_vlb (improved-diffusion's ``clip_denoised=False`` in training).

    Args:
        lambda_vlb: lambda, the weight of L_vlb; 0.001 in the paper.
    """

    def __init__(self, lambda_vlb: float = 0.001):
        if isinstance(lambda_vlb, bool) or not isinstance(lambda_vlb, (int, float)) or not lambda_vlb >= 0:
            raise ConfigError(f"lambda_vlb={lambda_vlb!r} is not allowed: use a number >= 0 (0.001 in Improved DDPM)")
        self.lambda_vlb = float(lambda_vlb)

    @staticmethod
    def check(denoiser: Denoiser) -> None:
        """A ConfigError when the network has no variance channels to train (C outputs, a fixed variance)."""
        if not denoiser.learned:
            raise ConfigError(f"loss=hybrid trains a learned variance, but the network outputs C channels with "
                              f"denoiser.variance={denoiser.variance}: set model.learn_sigma=true (2C output channels) "
                              "and denoiser.variance=learned_range, or use loss=simple")

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None, cond: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the timesteps t (B,) they were drawn at."""
        self.check(denoiser)
        schedule, x0 = denoiser.schedule, x0.float()  # (B, C, H, W)
        t, eps, x_t = _noised(denoiser, x0, generator)
        prediction, v = denoiser.split_output(denoiser.net_output(x_t, t, cond), x_t)  # (B, C, H, W) each
        target = denoiser.parameterization.target(schedule, x0, eps, t)
        simple = (prediction - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        # the mean detached, x0_hat unclipped: the gradient of L_vlb reaches v only
        frozen = denoiser.replace(clip_denoised=False).from_output(torch.cat([prediction.detach(), v], dim=1), x_t, t)
        vb = vb_term_from_output(schedule, x0, x_t, t, frozen).float()  # (B,) bits/dim
        self.terms = {"mse": simple.detach(), "vb": vb.detach()}  # L_simple and L_t per sample, for the per-t logs
        return simple + self.lambda_vlb * schedule.num_timesteps * vb, t


class VLBLoss:
    """L_vlb alone, T L_t for t ~ U{0..T-1} in bits/dim (``HybridLoss``'s term, without stop-gradient):
    it trains the mean and, with ``variance="learned_range"``, the variance (Nichol & Dhariwal 2021,
    Sec. 3.1: best likelihoods, noisier training; DDPM's "true variational bound" with a fixed variance).

    Args:
        importance_sampling: draw t ~ p_t proportional to sqrt(E[L_t^2]) and weight L_t by 1/p_t
            (their Sec. 3.3, Eq. 18; ``resample.LossSecondMomentSampler``), uniform until every t has
            ``history`` values of L_t.
        history: values of L_t kept per t for the importance weights (10 in the paper).
    """

    def __init__(self, importance_sampling: bool = False, history: int = 10):
        self.importance_sampling = check_choice("importance_sampling", importance_sampling, (True, False))
        self.history, self.resampler = check_history(history), None

    def __call__(
        self, denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None, cond: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) and the timesteps t (B,) they were drawn at."""
        schedule, x0 = denoiser.schedule, x0.float()  # (B, C, H, W)
        T, t, weight = schedule.num_timesteps, None, None
        if self.importance_sampling:
            if self.resampler is None or self.resampler.num_timesteps != T:
                self.resampler = LossSecondMomentSampler(T, self.history)
            t, weight = self.resampler.sample(x0.shape[0], x0.device, generator)  # (B,), 1 / (T p_t) (B,)
        t, _, x_t = _noised(denoiser, x0, generator, t)
        out = denoiser.replace(clip_denoised=False)(x_t, t, cond)
        vb = vb_term_from_output(schedule, x0, x_t, t, out).float()  # (B,) L_t in bits/dim
        self.terms = {"vb": vb.detach()}
        if weight is None:
            return T * vb, t
        self.resampler.update(t, vb)
        return T * weight * vb, t  # L_t / p_t
