"""The LightningModule of latent diffusion's first stage: a KL autoencoder, optionally with a patch GAN.

Rombach et al. 2022 (Sec. 3, App. G): reconstruction + a small KL towards N(0, I) keeps the latent
space smooth and of bounded scale for the diffusion model trained on it later; the adversarial term
(Esser et al. 2021) sharpens the reconstructions. The loss math is in ``ddpm.autoencoding.loss``.

Without a discriminator Lightning optimizes as for the diffusion model (gradient clipping, warm-up,
accumulation). With one, this module steps both optimizers itself (manual optimization): the
autoencoder through Lightning's optimizer, so ``global_step`` counts autoencoder steps as without
a discriminator, and the discriminator through its torch optimizer.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn

from ddpm.errors import ConfigError
from ddpm.nets.autoencoder import KLAutoencoder
from ddpm.training.checkpoints import check_steps_left
from ddpm.training.lr_schedule import warmup_cosine_lr
from ddpm.autoencoding.loss import (Perceptual, adaptive_weight, check_autoencoder_loss_options, hinge_d_loss,
                                            reconstruction_loss)


class AutoencoderModule(L.LightningModule):
    """Trains ``autoencoder`` (``ddpm.nets.autoencoder.KLAutoencoder``) on batches of images in [-1, 1].

    Args:
        autoencoder: the KL autoencoder; its weights are saved under ``autoencoder.``.
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the autoencoder's parameters
            (and again with the discriminator's).
        sample_shape: (C, H, W) of the data; must be the autoencoder's input shape.
        reconstruction: ``l1`` (LDM) or ``l2``, summed over pixels.
        kl_weight: weight of KL(q(z|x) || N(0, I)), summed over the latent (LDM: 1e-6; up to 1e-3
            gives a smoother, less detailed latent space; any value >= 0).
        perceptual_weight: weight of LPIPS (0: off); needs ``perceptual_path``.
        perceptual_path: local VGG-16 weights for LPIPS (nothing is downloaded).
        discriminator: a patch discriminator (``module/discriminator=patchgan``) or None.
        disc_start: the optimizer step at which the adversarial terms start.
        disc_weight: scale of the adaptive weight of the generator's adversarial loss (LDM: 0.5).
        lr_schedule: ``lr_schedule(optimizer) -> LambdaLR`` of the autoencoder's optimizer (``conf/lr_schedule/``:
            a linear warm-up, then constant or a cosine to 0 at ``trainer.max_steps``); None: constant.
        gradient_clip_val: with a discriminator, the autoencoder's gradient-norm clip (Lightning does not
            clip under manual optimization: ``build_autoencoder_module`` moves ``trainer.gradient_clip_val``
            here); without one, unused (the trainer clips).
    """

    def __init__(self, autoencoder: KLAutoencoder, optimizer: Callable[..., torch.optim.Optimizer],
                 sample_shape, reconstruction: str = "l1", kl_weight: float = 1e-6, perceptual_weight: float = 0.0,
                 perceptual_path: str | None = None, discriminator: nn.Module | None = None, disc_start: int = 0,
                 disc_weight: float = 0.5, lr_schedule: Callable | None = None,
                 gradient_clip_val: float | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["autoencoder", "optimizer", "discriminator", "lr_schedule"], logger=False)
        check_autoencoder_loss_options(reconstruction, kl_weight, disc_start, disc_weight, perceptual_weight)
        shape = (autoencoder.in_channels, autoencoder.image_size, autoencoder.image_size)
        if tuple(sample_shape) != shape:
            raise ConfigError(f"the autoencoder takes images of shape {list(shape)} (model.in_channels, model.image_size)"
                              f" but the data's are {list(sample_shape)}: use ${{data.channels}} and ${{data.image_size}}")
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.optimizer_factory = optimizer
        self.sample_shape = tuple(sample_shape)
        self.reconstruction, self.kl_weight = reconstruction, float(kl_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual = Perceptual(perceptual_path) if perceptual_weight > 0 else None
        self.disc_start, self.disc_weight = disc_start, float(disc_weight)
        self.lr_schedule = lr_schedule or warmup_cosine_lr
        self.gradient_clip_val = gradient_clip_val
        self.automatic_optimization = discriminator is None

    # ---- the model ------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions (B, C, H, W), clamped to [-1, 1], of images x (B, C, H, W): decoded posterior modes."""
        was_training = self.training
        self.eval()
        x_hat = self.autoencoder(x.to(self.device), sample_posterior=False)[0]
        self.train(was_training)
        return x_hat.clamp(-1.0, 1.0)

    def rec_loss(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Per-sample reconstruction loss (B,): pixel term + perceptual_weight * LPIPS (per pixel, as pixels are summed)."""
        loss = reconstruction_loss(x, x_hat, self.reconstruction)
        if self.perceptual is not None:
            loss = loss + self.perceptual_weight * self.perceptual(x, x_hat) * x[0].numel()
        return loss

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch  # (B, C, H, W) in [-1, 1]
        x_hat, posterior = self.autoencoder(x)
        rec = self.rec_loss(x, x_hat).mean()
        kl = posterior.kl().mean()
        loss = rec + self.kl_weight * kl
        logs = {"train/rec_loss": rec.detach() / x[0].numel(), "train/kl": kl.detach()}  # rec per pixel
        if self.discriminator is None:
            self.log("train/loss", loss.detach(), prog_bar=True)
            self.log_dict(logs)
            return loss
        adversarial = self.global_step >= self.disc_start
        if adversarial:
            g_loss = -self.discriminator(x_hat).mean()  # hinge generator loss
            weight = self.disc_weight * adaptive_weight(rec, g_loss, self.autoencoder.last_layer)
            loss = loss + weight * g_loss
            logs.update({"train/g_loss": g_loss.detach(), "train/adaptive_weight": weight})
        opt_ae, opt_d = self.optimizers()
        self.toggle_optimizer(opt_ae)  # the discriminator's parameters get no gradient from this loss
        opt_ae.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt_ae, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        opt_ae.step()  # Lightning's wrapper: global_step counts this
        self.untoggle_optimizer(opt_ae)
        self.lr_schedulers().step()
        if adversarial:
            d_loss = hinge_d_loss(self.discriminator(x.detach()), self.discriminator(x_hat.detach()))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.optimizer.step()  # the torch optimizer itself: not counted as a training step
            logs["train/d_loss"] = d_loss.detach()
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict(logs)
        return None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_steps_left(self, checkpoint)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.autoencoder.parameters())
        scheduler = self.lr_schedule(optimizer)  # linear warm-up, then constant or a cosine to 0 at trainer.max_steps
        first = {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if self.discriminator is None:
            return first
        return [first, {"optimizer": self.optimizer_factory(self.discriminator.parameters())}]
