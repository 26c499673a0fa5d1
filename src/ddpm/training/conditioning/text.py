"""Text prompts through cross-attention: the encoder, its EMA, the empty prompt and caption dropping
(see the package docstring)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ddpm.diffusion.conditions import TextCondition, as_text_condition
from ddpm.errors import ConfigError
from ddpm.training.conditioning.base import ClassConditioning, Conditioning, Unconditional, check_prompts, is_prompts
from ddpm.training.ema import make_ema


class TextConditioning(Conditioning):
    """Text prompts through cross-attention; the null condition is the empty prompt "", that a training
    caption becomes with probability p_uncond (see the module docstring).

    Args:
        encoder: the prompt encoder (``conf/text_encoder/``), or None for a net trained on precomputed
            embeddings only (``data.captions=embeddings``; then ``context_dim`` is required).
        p_uncond: the probability that a training caption is dropped to "".
        ema_decay, ema_warmup: the EMA of a trainable encoder (the module's, by interpolation).
        context_dim: the embedding width; None: the encoder's ``dim``.
    """

    def __init__(self, encoder: nn.Module | None = None, p_uncond: float = 0.1, ema_decay: float = 0.999,
                 ema_warmup: bool = True, context_dim: int | None = None):
        super().__init__(p_uncond)
        dim = getattr(encoder, "dim", context_dim)
        if context_dim is not None and dim != context_dim:
            raise ConfigError(f"the text encoder gives embeddings of width {dim} but conditioning.context_dim={context_dim}: "
                              "they must match (leave conditioning.context_dim unset to take the encoder's)")
        if dim is None:
            raise ConfigError("conditioning.context_dim=null without a text encoder: give the width of the precomputed "
                              "embeddings (conditioning.context_dim=D) or a text encoder")
        self.encoder, self.context_dim = encoder, int(dim)
        self.trainable = bool(getattr(encoder, "trainable", False))
        self.ema = make_ema(encoder, ema_decay, ema_warmup) if self.trainable else None
        self._null: TextCondition | None = None  # the empty prompt of precomputed embeddings (no encoder)

    @property
    def conditional(self) -> bool:
        return True

    @property
    def needs_class_prompts(self) -> bool:
        """Samples of class k are drawn from the data's prompt for class k (none to encode without an encoder)."""
        return self.encoder is not None

    def net_args(self) -> dict:
        return {"context_dim": self.context_dim}

    # ---- the encoder and the empty prompt -------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) if self.trainable else []

    def update_ema(self, enabled: Tensor | None = None) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.encoder, enabled=enabled)

    def _encoder(self, use_ema: bool) -> nn.Module:
        if self.encoder is None:
            raise ConfigError("prompts need a text encoder, but this model was trained on precomputed embeddings "
                              "without one: pass prompts encoded by the same encoder (a TextCondition), or train with "
                              "conditioning=text_clip conditioning.encoder.weights=... so that prompts can be encoded here")
        return self.ema.module if (use_ema and self.ema is not None) else self.encoder

    def encode(self, prompts: Sequence[str], use_ema: bool = True) -> TextCondition:
        """Prompts -> TextCondition (B, L, D) on the encoder's device."""
        emb, mask = self._encoder(use_ema)(check_prompts(prompts))
        return TextCondition(emb.float(), mask.bool())

    def set_null(self, null: Any) -> None:
        """The empty prompt's (embeddings (1, L, D), mask (1, L)) from precomputed data."""
        cond = as_text_condition(null)
        self._null = None if cond is None else TextCondition(cond.embeddings.float().cpu(), cond.mask.bool().cpu())

    def null(self, use_ema: bool = True, device: torch.device | None = None) -> TextCondition:
        """The empty prompt "" (1, L, D): the null condition of classifier-free guidance."""
        if self.encoder is None:
            if self._null is None:
                raise ConfigError("this text model has neither a text encoder nor the empty prompt's embeddings "
                                  "(null_embeddings in the data's .npz): give conditioning=text_small|text_clip or such data")
            return self._null.to(device) if device is not None else self._null
        return self.encode([""], use_ema)

    def on_fit_start(self, datamodule) -> None:
        null = getattr(datamodule, "null_condition", None)
        if null is not None:
            self.set_null(null)  # precomputed embeddings: the data's empty prompt

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._null is not None:
            checkpoint["null_prompt"] = {"embeddings": self._null.embeddings, "mask": self._null.mask}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "null_prompt" in checkpoint:
            self.set_null((checkpoint["null_prompt"]["embeddings"], checkpoint["null_prompt"]["mask"]))

    # ---- training -----------------------------------------------------------------------------
    def training_condition(self, batch, generator: torch.Generator) -> TextCondition:
        """The batch's captions encoded (B, L, D) by the raw encoder (gradients flow into a trainable one), each
        dropped to the empty prompt with probability p_uncond."""
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ConfigError("a text-conditional model needs captioned batches (images, captions), but the data gives "
                              "none: set data.captions=templates, sidecar or embeddings")
        drop = self.dropped(batch[0].shape[0], generator, batch[0].device)  # (B,)
        return self.captions_condition(batch[1], drop)

    def captions_condition(self, captions: Any, drop: Tensor | None) -> TextCondition:
        """Captions (list[str], or precomputed (embeddings (B, L, D), mask (B, L))) encoded; where ``drop`` (B,)
        is True, the empty prompt."""
        pre = as_text_condition(captions)
        if pre is not None:
            if pre.embeddings.shape[-1] != self.context_dim:
                raise ConfigError(f"the precomputed embeddings have width {pre.embeddings.shape[-1]} but conditioning."
                                  f"context_dim={self.context_dim}: set conditioning.context_dim={pre.embeddings.shape[-1]}")
            cond, device = TextCondition(pre.embeddings.float(), pre.mask.bool()), pre.embeddings.device
            if self._null is not None and self._null.embeddings.device != device:
                self._null = self._null.to(device)  # moved once, not copied to the device every step
            null = self._null if self._null is not None else (
                self.null(use_ema=False) if self.encoder is not None else None)
            if null is None:
                raise ConfigError("precomputed embeddings without the empty prompt's: the .npz needs null_embeddings "
                                  "and null_mask for classifier-free guidance (or set conditioning.p_uncond=0)")
        else:
            if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
                raise ConfigError("a text-conditional model needs captioned batches (images, captions), but the data "
                                  "gives labels or nothing: set data.captions=templates, sidecar or embeddings")
            null_and_cond = self.encode(["", *captions], use_ema=False)  # one encoder call: (1 + B, L, D)
            null, cond = null_and_cond.select(slice(0, 1)), null_and_cond.select(slice(1, None))
        if len(null.embeddings) and null.embeddings.shape[1:] != cond.embeddings.shape[1:]:
            raise ConfigError(f"the empty prompt's embeddings have shape {tuple(null.embeddings.shape[1:])} but the "
                              f"captions' {tuple(cond.embeddings.shape[1:])}: both must come from one encoder")
        return cond if drop is None else cond.where(~drop.to(cond.mask.device), null)

    # ---- sampling -----------------------------------------------------------------------------
    def sampling_condition(self, cond: Any, device: torch.device, use_ema: bool = True) -> TextCondition | None:
        if cond is None:
            return None
        if not is_prompts(cond):
            raise ConfigError("class labels were given to a text-conditional model (conditioning=text_*): give "
                              "prompts, e.g. prompts=['a handwritten three']")
        encoded = as_text_condition(cond)
        return encoded.to(device) if encoded is not None else self.encode(check_prompts(cond), use_ema).to(device)

    def guidance_args(self, use_ema: bool = True, device: torch.device | None = None) -> dict:
        return {"num_classes": None, "null_condition": self.null(use_ema, device)}

    def class_count(self, class_prompts: Sequence[str] | None) -> int | None:
        return len(class_prompts) if class_prompts and self.encoder is not None else None

    def for_labels(self, labels: Tensor, class_prompts: Sequence[str] | None) -> list[str] | None:
        """Label k -> the class prompt k ("a handwritten three"); None for a model without an encoder
        (precomputed embeddings: no prompts to encode, the empty prompt's samples)."""
        if self.encoder is None:
            return None
        if class_prompts is None:
            raise ConfigError("sampling a text model per class needs the data's class names and caption templates "
                              "(data.class_names, data.caption_templates), or explicit prompts")
        return [class_prompts[int(k)] for k in labels]


def conditioning_of(net: nn.Module) -> Conditioning:
    """The conditioning a net was built for, when none is given: class labels (p_uncond 0.1) for
    ``net.num_classes``, precomputed prompt embeddings for ``net.context_dim``, else none."""
    if getattr(net, "num_classes", None) is not None:
        return ClassConditioning(net.num_classes)
    if getattr(net, "context_dim", None) is not None:
        return TextConditioning(context_dim=net.context_dim)
    return Unconditional()
