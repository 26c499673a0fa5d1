"""Where data enter and leave the diffusion model: pixels as they are, or the latents of a frozen autoencoder.

    codec.encode(images (B, C, H, W), generator) -> x0 (B, *sample_shape)   what the loss sees
    codec.decode(x0 (B, *sample_shape))          -> images (B, C, H, W)     what samples become

``PixelCodec`` (``conf/codec/pixels.yaml``) is the identity. ``LatentCodec`` (``conf/codec/autoencoder.yaml``) is
latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"):
the same forward process, loss and samplers on z = scale_factor * (mean + std * eps), a sample of the
frozen autoencoder's posterior q(z|x) drawn afresh at every step as LDM does (the decoder was trained on
posterior samples, so the model learns what the decoder decodes), and samples decoded, D(z / scale_factor),
before they leave ``DiffusionModule.sample``, so the grid, the FID callback and ``evaluate.py`` see images.
As in DiT, where it is two lines where data enter (encode) and leave (decode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ddpm.data.images import TensorImageDataset
from ddpm.errors import ConfigError
from ddpm.autoencoding.latents import LatentCache, latent_scale, posterior_moments, scale_images


class PixelCodec(nn.Module):
    """The identity: the diffusion model runs on the data as they are."""

    latent = False

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images

    def decode(self, x: Tensor) -> Tensor:
        return x

    def check_denoiser(self, denoiser) -> None:
        pass

    def on_fit_start(self, module) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        pass

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pass


class LatentCodec(PixelCodec):
    """The scaled latents z = scale_factor * (mean + std * eps) of a frozen autoencoder's posterior q(z|x).

    The scale factor: LDM multiplies the latents by 1/std(z) of the training set so that they have
    unit variance, the scale every noise schedule assumes of its data (x_T ~ N(0, I) must swamp
    them, and the signal-to-noise ratio at each t must mean what it does for images in [-1, 1]);
    Stable Diffusion's 0.18215 is this number for its autoencoder. ``auto`` computes it at the start
    of a fresh fit from ``scale_images`` training images (``ddpm.autoencoding.latents.scale_images``,
    seed 0: the same images on every rank, and rank 0's number is broadcast) and keeps it in the
    ``scale_factor`` buffer, so checkpoints carry it and a resume or an evaluation never recomputes it.

    The autoencoder is held outside ``nn.Module``'s registries (as ``OpenCLIPTextEncoder`` holds its
    tower): it is in neither ``parameters()``, the optimizer, nor ``state_dict()``; it gets no gradients
    and stays in eval mode; ``.to()`` moves it. The checkpoint names it: the ``autoencoder_digest``
    buffer holds the sha256 of its weights, and loading or resuming with an autoencoder of other weights
    is a ConfigError naming both digests.

    Args:
        autoencoder: the frozen autoencoder (``ddpm.nets.autoencoder.KLAutoencoder``): ``encode(x) ->
            posterior`` (``.mean``, ``.std`` (B, c, h, w)), ``decode(z) -> x``.
        autoencoder_info: ``load_autoencoder``'s info: ``path``, ``digest``, ``image_size``, ``channels``,
            ``latent_shape``.
        autoencoder_ckpt: the autoencoder checkpoint the config names (recorded with the run).
        image_shape: (C, H, W) of the data's images; the autoencoder must take that shape.
        scale_factor: ``auto`` (see above) or a number used as is.
        scale_images: images the ``auto`` scale factor is computed from.
        cache_latents: ``true``: encode the whole in-memory training set once at the start of the fit
            and look latents up by image (``LatentCache``; mirrored images too under ``data.hflip``);
            ``false``: encode every batch; ``auto``: cache when the set is in memory, not mirrored, the
            cache takes at most ``max_cache_bytes``, and the run draws at least as many images as the
            set holds (so encoding it once costs no more than encoding on the fly).
        max_cache_bytes: the memory limit of ``cache_latents=auto``.
    """

    latent = True

    def __init__(self, autoencoder: nn.Module, autoencoder_info: dict, autoencoder_ckpt: str,
                 image_shape: Sequence[int], scale_factor: float | str = "auto", scale_images: int = 4096,
                 cache_latents: bool | str = "auto", max_cache_bytes: int = 2**30):
        super().__init__()
        check_latent_options(scale_factor, scale_images, cache_latents)
        check_autoencoder_fits(autoencoder_info, image_shape)
        autoencoder.requires_grad_(False)
        object.__setattr__(self, "_autoencoder", autoencoder.eval())  # not registered: out of parameters() and state_dict()
        self.info = dict(autoencoder_info)
        self.image_shape, self.latent_shape = tuple(int(s) for s in image_shape), tuple(autoencoder_info["latent_shape"])
        self.scale_option, self.scale_count = scale_factor, int(scale_images)
        self.cache_option, self.max_cache_bytes = cache_latents, int(max_cache_bytes)
        self.register_buffer("scale_factor", torch.tensor(math.nan if scale_factor == "auto" else float(scale_factor)))
        digest = bytes.fromhex(autoencoder_info["digest"])
        self.register_buffer("autoencoder_digest", torch.tensor(list(digest), dtype=torch.uint8))  # (32,) sha256
        self.cache: LatentCache | None = None
        self._trained_with: str | None = None  # the autoencoder path a checkpoint being loaded names
        self._register_load_state_dict_pre_hook(refuse_other_autoencoders, with_module=True)

    @property
    def autoencoder(self) -> nn.Module:
        """The frozen autoencoder (unregistered)."""
        return self._autoencoder

    def _apply(self, fn, recurse: bool = True):  # .to(device), .cuda() ... reach the hidden autoencoder too
        super()._apply(fn, recurse)
        self._autoencoder._apply(fn)
        return self

    def check_denoiser(self, denoiser) -> None:
        if denoiser.clip_denoised:
            raise ConfigError("denoiser.clip_denoised=true clips x0_hat to [-1, 1], but scaled latents have unit "
                              "variance (a third of them lie outside): set denoiser.clip_denoised=false for codec=autoencoder")

    # ---- images <-> latents -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = scale_factor * (mean + std * eps) (B, c, h, w), a sample of q(z|x) scaled, of images (B, C, H, W)
        in [-1, 1]; eps ~ N(0, I) from ``generator`` (in training: the per-rank, per-step noise generator)."""
        mean, std = self.cache.moments(images) if self.cache is not None else posterior_moments(self.autoencoder, images)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)  # (B, c, h, w)
        return self.scale_factor * (mean + std * eps)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, H, W), unclamped, of scaled latents z (B, c, h, w): D(z / scale_factor)."""
        scale = float(self.scale_factor)
        if math.isnan(scale):
            raise ConfigError("codec.scale_factor=auto has not been computed yet: it is set at the start of training "
                              "(or read from a checkpoint); give codec.scale_factor=NUMBER to sample an untrained model")
        return self.autoencoder.decode(z / scale)

    # ---- the start of a fit: scale factor and cache -------------------------------------------
    def on_fit_start(self, module) -> None:
        trainer = module.trainer
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "dataset", None)
        if math.isnan(float(self.scale_factor)):  # auto, on a fresh fit (a resumed one has the checkpoint's)
            if dataset is None:
                raise ConfigError("codec.scale_factor=auto needs the training set of an ImageDataModule: "
                                  "give codec.scale_factor=NUMBER")
            images = scale_images(dataset, self.scale_count).to(module.device)  # (n, C, H, W)
            value = trainer.strategy.broadcast(latent_scale(*posterior_moments(self.autoencoder, images)), src=0)
            self.scale_factor.fill_(value)
            rank_zero_info(f"codec.scale_factor=auto: 1/std(z) = {value:.6g} over {len(images)} training images")
        self.cache = self.make_cache(trainer, datamodule, dataset, module.global_step, module.device)

    def make_cache(self, trainer, datamodule, dataset, step: int, device: torch.device) -> LatentCache | None:
        """The ``LatentCache`` of the training set as ``cache_latents`` asks (see the class), or None."""
        if self.cache_option is False:
            return None
        if not isinstance(dataset, TensorImageDataset):
            if self.cache_option is True:
                raise ConfigError(f"codec.cache_latents=true needs an in-memory dataset, not "
                                  f"{type(dataset).__name__}: use codec.cache_latents=auto or false")
            return None
        flips = bool(getattr(datamodule, "hflip", False))
        count = len(dataset) * (2 if flips else 1)
        nbytes = LatentCache.nbytes(count, self.image_shape, self.latent_shape)
        if self.cache_option == "auto":
            steps = trainer.max_steps - step if trainer.max_steps >= 0 else math.inf
            draws = steps * getattr(datamodule, "batch_size", 1) * trainer.accumulate_grad_batches
            if flips or nbytes > self.max_cache_bytes or draws < len(dataset):
                return None
        levels = dataset.images.to(device)  # (N, C, H, W) uint8
        cache = LatentCache(self.autoencoder, torch.cat([levels, levels.flip(-1)]) if flips else levels,
                            dataset.max_value)
        rank_zero_info(f"codec.cache_latents={str(self.cache_option).lower()}: the posteriors of {count} training images "
                       f"cached ({nbytes / 2**20:.0f} MiB)")
        return cache

    # ---- checkpoints: which autoencoder ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["autoencoder"] = {"path": self.info["path"], "digest": self.info["digest"]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._trained_with = (checkpoint.get("autoencoder") or {}).get("path")  # for the refusal's message


def refuse_other_autoencoders(codec: LatentCodec, state_dict: dict, prefix: str, *args) -> None:
    """Weights trained on another autoencoder (the ``autoencoder_digest`` differs) or with another configured
    scale factor are refused, one line each, before they are loaded."""
    saved = state_dict.get(prefix + "autoencoder_digest")
    if saved is not None and not torch.equal(saved.cpu(), codec.autoencoder_digest.cpu()):
        where = f" (at {codec._trained_with})" if codec._trained_with else ""
        raise ConfigError(
            f"this checkpoint was trained with the autoencoder of digest {bytes(saved.tolist()).hex()}{where}, but "
            f"codec.autoencoder_ckpt={codec.info['path']} has digest {codec.info['digest']}: "
            "a latent model only decodes with its own autoencoder; give the one it was trained with")
    scale = state_dict.get(prefix + "scale_factor")
    if scale is not None and codec.scale_option != "auto" and not math.isclose(float(scale), float(codec.scale_option)):
        raise ConfigError(f"codec.scale_factor={codec.scale_option} but the checkpoint was trained with "
                          f"{float(scale):.6g}: leave codec.scale_factor=auto (the checkpoint's) or give that number")


def check_latent_options(scale_factor, scale_images: int, cache_latents) -> None:
    """One ConfigError line for a bad ``codec.scale_factor``, ``scale_images`` or ``cache_latents``."""
    number = isinstance(scale_factor, (int, float)) and not isinstance(scale_factor, bool)
    if scale_factor != "auto" and not (number and math.isfinite(scale_factor) and scale_factor > 0):
        raise ConfigError(f"codec.scale_factor={scale_factor!r} is not allowed: use auto (1/std of the training "
                          "latents) or a number > 0 such as 0.18215")
    if isinstance(scale_images, bool) or not isinstance(scale_images, int) or scale_images < 2:
        raise ConfigError(f"codec.scale_images={scale_images!r} is not allowed: use an integer >= 2")
    if cache_latents not in (True, False, "auto") or isinstance(cache_latents, int) and not isinstance(cache_latents, bool):
        raise ConfigError(f"codec.cache_latents={cache_latents!r} is not allowed: use auto, true or false")


def check_autoencoder_fits(info: dict, image_shape: Sequence[int]) -> None:
    """A ConfigError of one line when the autoencoder takes images of another shape than the data's (C, H, W)."""
    c, h, w = (int(s) for s in image_shape)
    if (info["channels"], info["image_size"]) != (c, h) or h != w:
        raise ConfigError(
            f"codec.autoencoder_ckpt={info['path']} encodes {info['channels']}x{info['image_size']}x{info['image_size']} "
            f"images but the data gives {c}x{h}x{w}: use an autoencoder trained on this data (data.channels, "
            "data.image_size)")
