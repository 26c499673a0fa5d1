"""The text side of a text-conditional model: its prompt encoder, the encoder's EMA, and the null prompt.

    text = PromptConditioning(encoder, ema_decay, ema_warmup)
    text.encode(["a handwritten three"], use_ema=True) -> TextCondition (1, L, D)
    text.null(use_ema)                                  -> TextCondition (1, L, D): the empty prompt ""
    text.training_condition(batch[1], drop (B,) bool)   -> TextCondition (B, L, D), dropped ones -> ""

The encoder (``ddpm.nets.text_encoders``) is ``forward(list[str]) -> (embeddings (B, L, D), mask (B, L))``.
A trainable one (``trainable=True``, e.g. ``text_encoder=small``) is trained jointly with the network:
its parameters are in the optimizer, the checkpoint and an EMA of their own (sampling uses the EMA
encoder with the EMA network). A frozen one (``text_encoder=clip``) keeps its weights out of both.

A model trained on precomputed embeddings (an ``.npz`` beside the data) may have no encoder: its null
prompt comes from the data (``set_null``) and is stored in the checkpoint; it samples from encoded
prompts (``TextCondition``) only, or from strings once an encoder of the same kind is given.
The null condition of classifier-free guidance is the empty prompt, as in Stable Diffusion.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ddpm.diffusion.conditions import TextCondition, as_text_condition
from ddpm.diffusion.guidance import check_labels
from ddpm.errors import ConfigError
from ddpm.training.ema import make_ema


class PromptConditioning(nn.Module):
    """Holds the text encoder of a text-conditional model (see the module docstring)."""

    def __init__(self, encoder: nn.Module | None, ema_decay: float, ema_warmup: bool = True,
                 context_dim: int | None = None):
        super().__init__()
        self.encoder, self.context_dim = encoder, context_dim
        self.trainable = bool(getattr(encoder, "trainable", False))
        self.ema = make_ema(encoder, ema_decay, ema_warmup) if self.trainable else None
        self._null: TextCondition | None = None  # the empty prompt of precomputed embeddings (no encoder)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) if self.trainable else []

    def update_ema(self, enabled: Tensor | None = None) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.encoder, enabled=enabled)

    def _encoder(self, use_ema: bool) -> nn.Module:
        if self.encoder is None:
            raise ConfigError("prompts need a text encoder, but this model was trained on precomputed embeddings "
                              "without one: pass prompts encoded by the same encoder (a TextCondition), or train with "
                              "text_encoder=clip text_encoder.weights=... so that prompts can be encoded here")
        return self.ema.module if (use_ema and self.ema is not None) else self.encoder

    def encode(self, prompts: Sequence[str], use_ema: bool = True) -> TextCondition:
        """Prompts -> TextCondition (B, L, D) on the encoder's device."""
        prompts = check_prompts(prompts)
        emb, mask = self._encoder(use_ema)(prompts)
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
                                  "(null_embeddings in the data's .npz): give text_encoder=... or such data")
            return self._null.to(device) if device is not None else self._null
        return self.encode([""], use_ema)

    def training_condition(self, captions: Any, drop: Tensor | None) -> TextCondition:
        """A batch's prompts (list[str], or precomputed (embeddings (B, L, D), mask (B, L))) encoded by the
        raw encoder (gradients flow into a trainable one); where ``drop`` (B,) is True, the empty prompt."""
        pre = as_text_condition(captions)
        if pre is not None:
            if self.context_dim is not None and pre.embeddings.shape[-1] != self.context_dim:
                raise ConfigError(f"the precomputed embeddings have width {pre.embeddings.shape[-1]} but model.context_dim="
                                  f"{self.context_dim}: set model.context_dim={pre.embeddings.shape[-1]}")
            cond, device = TextCondition(pre.embeddings.float(), pre.mask.bool()), pre.embeddings.device
            if self._null is not None and self._null.embeddings.device != device:
                self._null = self._null.to(device)  # moved once, not copied to the device every step
            null = self._null if self._null is not None else (
                self.null(use_ema=False) if self.encoder is not None else None)
            if null is None:
                raise ConfigError("precomputed embeddings without the empty prompt's: the .npz needs null_embeddings "
                                  "and null_mask for classifier-free guidance (or set module.p_uncond=0)")
        else:
            if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
                raise ConfigError("a text-conditional model (model.context_dim set) needs captioned batches (images, "
                                  "captions), but the data gives labels or nothing: set data.captions=templates, "
                                  "sidecar or embeddings")
            null_and_cond = self.encode(["", *captions], use_ema=False)  # one encoder call: (1 + B, L, D)
            null, cond = null_and_cond.select(slice(0, 1)), null_and_cond.select(slice(1, None))
        if len(null.embeddings) and null.embeddings.shape[1:] != cond.embeddings.shape[1:]:
            raise ConfigError(f"the empty prompt's embeddings have shape {tuple(null.embeddings.shape[1:])} but the "
                              f"captions' {tuple(cond.embeddings.shape[1:])}: both must come from one encoder")
        return cond if drop is None else cond.where(~drop.to(cond.mask.device), null)

    def state_for_checkpoint(self) -> dict | None:
        return None if self._null is None else {"embeddings": self._null.embeddings, "mask": self._null.mask}


def check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompts={prompts!r} is not allowed: give a list of strings, e.g. prompts=['a handwritten three']")
    return list(prompts)


def sampling_condition(cond: Any, text: PromptConditioning | None, num_classes: int | None, device: torch.device,
                       use_ema: bool = True) -> Tensor | TextCondition | None:
    """Checked labels (N,) or encoded prompts (N, L, D) for ``DiffusionModule.sample``; a ConfigError for a
    condition of the wrong kind (prompts to a class-conditional or unconditional model, labels to a text model)."""
    if cond is None:
        return None
    encoded = as_text_condition(cond)
    is_prompts = encoded is not None or isinstance(cond, str) or (
        isinstance(cond, (list, tuple)) and any(isinstance(c, str) for c in cond))
    if is_prompts and text is None:
        kind = "class-conditional (model.num_classes set)" if num_classes is not None else "unconditional"
        shown = list(cond) if encoded is None and not isinstance(cond, str) else cond if encoded is None else "<encoded>"
        raise ConfigError(f"prompts={shown!r} were given to a {kind} model without text conditioning "
                          "(model.context_dim=null): prompts need a text-conditional model (e.g. experiment=digits_text)"
                          + ("; give class_labels= instead" if num_classes is not None else ""))
    if text is None:
        return check_labels(cond, num_classes)
    if not is_prompts:
        raise ConfigError("class labels were given to a text-conditional model (model.context_dim set): give prompts, "
                          "e.g. prompts=['a handwritten three']")
    return encoded.to(device) if encoded is not None else text.encode(check_prompts(cond), use_ema)


def class_prompts_of(datamodule) -> list[str] | None:
    """One prompt per class of a captioned labelled dataset (its first caption template filled with each
    class name, e.g. "a handwritten three"), or None when the data has no class names or templates."""
    names, templates = getattr(datamodule, "class_names", None), getattr(datamodule, "caption_templates", None)
    if not names or not templates:
        return None
    return [str(templates[0]).format(name=name, index=k) for k, name in enumerate(names)]


def conditions_for(pl_module, datamodule, labels: Tensor | None, prompts: Sequence[str] | None = None):
    """What ``pl_module.sample`` takes for samples of class ``labels`` (N,): the labels themselves, or for a
    text model the class prompts (``prompts[k]``, default ``class_prompts_of(datamodule)``) of each label."""
    text = getattr(pl_module, "text", None)
    if labels is None or text is None:
        return labels
    if text.encoder is None:  # trained on precomputed embeddings: no prompts to encode, the empty prompt's samples
        return None
    table = list(prompts) if prompts is not None else class_prompts_of(datamodule)
    if table is None:
        raise ConfigError("sampling a text model per class needs the data's class names and caption templates "
                          "(data.class_names, data.caption_templates), or explicit prompts")
    return [table[int(k)] for k in labels]
