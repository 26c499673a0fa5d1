"""How well an autoencoder reconstructs images: peak signal-to-noise ratio."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio


def psnr(images: Tensor, reconstructions: Tensor) -> Tensor:
    """Per-image PSNR (N,) in dB of reconstructions of images, both (N, C, H, W) in [-1, 1]: mapped to
    [0, 1] (reconstructions clamped), 10 * log10(1 / MSE) with the MSE over one image's pixels.
    Average the result for a dataset's PSNR (the mean of per-image values, as LDM reports it)."""
    x = (images.double() + 1) / 2  # (N, C, H, W) in [0, 1]
    x_hat = (reconstructions.double().clamp(-1, 1) + 1) / 2
    return peak_signal_noise_ratio(x_hat, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).float()
