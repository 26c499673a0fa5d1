"""The latents of a frozen autoencoder: posterior moments, the scale factor, and a cache of a training set's.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3 and 4.3.2) runs the diffusion process on z ~ q(z|x) = N(mean(x), diag(std(x)^2)),
the posterior of a KL-regularised autoencoder, multiplied by a scale factor that gives the latents
unit variance. Nothing here is trained: the autoencoder is frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def posterior_moments(autoencoder: nn.Module, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """q(z|x) of images (N, C, H, W) in [-1, 1]: (mean, std), each (N, c, h, w) float32.

    Encoded in float32 with autocast off (a bf16 encoding would round the very targets the diffusion
    model learns), in batches of ``batch_size``.
    """
    means, stds = [], []
    for chunk in images.split(batch_size):
        with torch.autocast(chunk.device.type, enabled=False):
            posterior = autoencoder.encode(chunk.float())
        means.append(posterior.mean.float())  # (b, c, h, w)
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def latent_scale(mean: Tensor, std: Tensor) -> float:
    """1 / std(z) of z ~ q(z|x) over a set of images, from their posterior moments (N, c, h, w).

    By the law of total variance, the variance of z over all N*c*h*w elements is
    Var(mean) + E[std^2] (population variance, in float64), so the number needs no noise drawn:
    it is the expectation of what LDM computes from one posterior sample per image
    (``1 / z.flatten().std()``). Multiplying by it gives latents of unit variance.
    """
    variance = mean.double().var(unbiased=False) + std.double().square().mean()
    return float(variance.rsqrt())


def scale_images(dataset, count: int, seed: int = 0) -> Tensor:
    """``count`` training images (n, C, H, W) in [-1, 1] (all of them when the set is smaller), drawn
    without replacement by a generator seeded ``seed``: the same images on every rank and every run."""
    n = min(count, len(dataset))
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([dataset[int(i)][0] for i in index])


class LatentCache:
    """The posterior moments of every image of an in-memory training set, found again by the image's pixels.

    Training batches carry images, not dataset indices, so each image is looked up by its content: the
    integer levels of the image (0..max_value < 256) are hashed to an int64 key (a dot product with
    fixed random weights small enough that no sum reaches 2**62), the keys are sorted once, and a batch's keys are
    found with ``searchsorted``. A found image is compared level by level with the stored one, so a
    hash collision can only cost a miss; images not found (mirrored ones, collisions) are encoded.

    Args:
        autoencoder: the frozen autoencoder (``encode(x) -> posterior``).
        levels: the training images as integer levels (N, C, H, W) uint8, on the training device.
        max_value: the largest level (255; 16 for scikit-learn's digits): x = level * 2 / max_value - 1.
        batch_size: images encoded at a time while the cache is built.
    """

    def __init__(self, autoencoder: nn.Module, levels: Tensor, max_value: float, batch_size: int = 256):
        self.autoencoder, self.max_value = autoencoder, float(max_value)
        flat = levels.reshape(len(levels), -1)  # (N, C*H*W) uint8
        bits = 62 - 8 - (flat.shape[1] - 1).bit_length()  # 255 * 2**bits * C*H*W < 2**62
        weights = torch.randint(0, 2**bits, (flat.shape[1],), generator=torch.Generator().manual_seed(0))
        self.weights = weights.to(flat.device)  # (C*H*W,) int64
        self.keys, order = torch.cat([self._key(part) for part in flat.split(4096)]).sort()  # (N,); in parts: int64 copies
        mean, std = posterior_moments(autoencoder, levels.float() * (2.0 / self.max_value) - 1.0, batch_size)
        self.levels, self.mean, self.std = flat[order], mean[order], std[order]

    @staticmethod
    def nbytes(count: int, image_shape, latent_shape) -> int:
        """Memory of a cache of ``count`` images: their uint8 levels, float32 mean and std, int64 keys."""
        image, latent = int(torch.Size(image_shape).numel()), int(torch.Size(latent_shape).numel())
        return count * (image + 8 * latent + 8)

    def _key(self, flat: Tensor) -> Tensor:
        return (flat.long() * self.weights).sum(1)  # (B,)

    def __len__(self) -> int:
        return len(self.keys)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) (B, c, h, w) of images (B, C, H, W) in [-1, 1]: cached, or encoded when not found."""
        levels = ((images.float() + 1.0) * (self.max_value / 2.0)).round().clamp(0, self.max_value)
        flat = levels.reshape(len(images), -1).to(torch.uint8)  # (B, C*H*W)
        keys = self._key(flat)
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)  # (B,)
        found = (self.keys[at] == keys) & (self.levels[at] == flat).all(1)  # (B,)
        mean, std = self.mean[at], self.std[at]  # (B, c, h, w)
        if not bool(found.all()):  # a host sync; with every image cached it is the only one per step
            missing = ~found
            mean[missing], std[missing] = posterior_moments(self.autoencoder, images[missing])
        return mean, std
