"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G), at small scale.

The network is diffusers' ``AutoencoderKL`` (ResNet blocks, a mid-block with attention, a diagonal
Gaussian posterior q(z|x) = N(mu(x), diag(sigma^2(x))), ``DiagonalGaussianDistribution``); this class
only adds what a dataset of small images needs: padding to a multiple of the downsampling factor f,
and the shapes a latent diffusion model reads (``latent_shape``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor, nn

from ddpm.errors import ConfigError


class KLAutoencoder(nn.Module):
    """LDM's AutoencoderKL: diffusers ``AutoencoderKL`` inside, f = 2**(len(channel_mult) - 1).

    Images are padded with -1 (the background of images in [-1, 1]) to ``padded_size`` before encoding
    and cropped back after decoding: MNIST's 28 -> 32 -> an 8x8 latent at f=4 (a 7x7 one would leave
    a latent U-Net no even side to halve).

    Args:
        in_channels: image channels C (1 for MNIST, 3 for CIFAR-10).
        image_size: the data's side H = W (e.g. 28).
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one entry per resolution level; each level but the last halves the side.
        num_res_blocks: ResNet blocks per level (diffusers' ``layers_per_block``).
        z_channels: latent channels (4 in LDM's f=4 and f=8 models).
        norm_groups: GroupNorm groups; every level's width must be a multiple of it.
        attention: self-attention in the encoder's and decoder's mid-block (LDM has it).
        padded_size: the side the images are padded to, a multiple of f no smaller than ``image_size``;
            None: the smallest that gives an even latent side (28 -> 32 at f=4 and at f=8).
    """

    def __init__(self, in_channels: int, image_size: int, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, z_channels: int = 4,
                 norm_groups: int = 32, attention: bool = True, padded_size: int | None = None):
        super().__init__()
        widths = [int(base_channels) * int(m) for m in channel_mult]
        if not widths or min(widths) <= 0:
            raise ConfigError(f"model.channel_mult={list(channel_mult)!r} with base_channels={base_channels!r} is not "
                              "allowed: use one positive multiplier per level, e.g. [1, 2, 2] (f=4)")
        if any(w % norm_groups for w in widths):
            raise ConfigError(f"model.norm_groups={norm_groups} does not divide every level's width {widths}: use "
                              "a base_channels that is a multiple of norm_groups, or fewer groups")
        if image_size < 1 or in_channels < 1 or z_channels < 1:
            raise ConfigError(f"autoencoder image_size={image_size}, in_channels={in_channels}, z_channels="
                              f"{z_channels}: each must be a positive integer")
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.z_channels = int(z_channels)
        self.downsample_factor = 2 ** (len(widths) - 1)
        f = self.downsample_factor
        if padded_size is None:
            side = -(-self.image_size // f)  # latent side: 28 -> 7 at f=4, rounded up to an even side (8)
            side += side % 2 if side > 1 else 0
            padded_size = side * f
        if padded_size < self.image_size or padded_size % f:
            raise ConfigError(f"model.padded_size={padded_size} is not allowed: use a multiple of the downsampling "
                              f"factor f={f} no smaller than the image side {self.image_size}, or null")
        self.padded_size = int(padded_size)
        side = self.padded_size // f
        self.latent_shape: tuple[int, int, int] = (self.z_channels, side, side)
        self.vae = AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
            block_out_channels=tuple(widths), layers_per_block=num_res_blocks, latent_channels=z_channels,
            norm_num_groups=norm_groups, sample_size=self.padded_size, mid_block_add_attention=attention,
        )

    def _pad(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H', W'), H' the next multiple of f, the border filled with -1."""
        if tuple(x.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ConfigError(f"the autoencoder takes images of shape {[self.in_channels, self.image_size, self.image_size]}"
                              f" but was given {list(x.shape[1:])}: it was trained on other data")
        extra = self.padded_size - self.image_size
        if extra == 0:
            return x
        before, after = extra // 2, extra - extra // 2
        return F.pad(x, (before, after, before, after), value=-1.0)

    def _crop(self, x: Tensor) -> Tensor:
        """(B, C, H', W') -> (B, C, H, W): undoes ``_pad``."""
        before = (self.padded_size - self.image_size) // 2
        return x[..., before:before + self.image_size, before:before + self.image_size]

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        """q(z|x) of images x (B, C, H, W) in [-1, 1]: ``.mean`` / ``.std`` (B, z, h, w), ``.sample(generator)``,
        ``.mode()``, ``.kl()`` (B,), KL(q(z|x) || N(0, I)) summed over the latent."""
        return self.vae.encode(self._pad(x)).latent_dist

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, H, W), unclamped, of latents z (B, z, h, w)."""
        return self._crop(self.vae.decode(z).sample)

    def forward(self, x: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """(reconstruction (B, C, H, W), posterior) of x (B, C, H, W): decodes a posterior sample, or its mode."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output convolution weight: where LDM's adaptive GAN weight takes its gradients."""
        return self.vae.decoder.conv_out.weight


def weights_digest(net: nn.Module) -> str:
    """sha256 hex of ``net``'s state dict (sorted keys; each key, dtype, shape and the tensor's bytes):
    names the weights, so a model trained on one autoencoder can refuse another."""
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(list(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
