"""What a model is conditioned on, as one object: nothing, class labels, or text prompts.

    conditioning = ClassConditioning(num_classes=10, p_uncond=0.1)   # conf/conditioning/class.yaml
    conditioning.net_args()                             -> {"num_classes": 10}: what the net is built with
    conditioning.training_condition(batch, generator)   -> cond (B,) for the loss, dropped to null at rate p_uncond
    conditioning.sampling_condition(cond, device)       -> checked labels / encoded prompts for ``module.sample``
    conditioning.guidance_args(use_ema, device)         -> ``ClassifierFreeGuidance``'s num_classes / null_condition
    conditioning.balanced(n, class_prompts)             -> (cond, labels (n,)): n samples cycling over the classes

The three kinds (``Unconditional``, ``ClassConditioning``, ``TextConditioning``) answer the same calls, so
the module, the grid, FID and classifier callbacks and ``evaluate.py`` never ask which kind they hold.
Each owns its null condition (the null class K; the empty prompt "", Stable Diffusion's convention) and
its dropout (as DiT's ``LabelEmbedder.token_drop`` owns the label dropout), its trainable parameters (a
jointly trained text encoder and that encoder's EMA) and its checkpoint state (the empty prompt of
precomputed embeddings).

A text model's encoder (``ddpm.nets.text_encoders``) is ``forward(list[str]) -> (embeddings (B, L, D),
mask (B, L))``. A trainable one (``text_encoder/small.yaml``) is trained jointly with the network and
sampled through an EMA of its own; a frozen one (``text_encoder/clip.yaml``) stays out of the optimizer
and the checkpoint. A model trained on precomputed embeddings (an ``.npz`` beside the data) may have no
encoder: its empty prompt comes from the data and is stored in the checkpoint.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ddpm.diffusion.conditions import TextCondition, as_text_condition
from ddpm.diffusion.guidance import check_labels
from ddpm.errors import ConfigError
from ddpm.evaluation.sampling import balanced_labels
from ddpm.training.ema import make_ema


class Conditioning(nn.Module):
    """The calls every kind answers (see the module docstring); as itself, no condition."""

    num_classes: int | None = None  # class labels [0, K) and the null class K
    context_dim: int | None = None  # the width of encoded prompts
    needs_class_prompts = False  # samples of class k are drawn from the data's prompt for class k

    def __init__(self, p_uncond: float = 0.0):
        super().__init__()
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond <= 1.0:
            raise ConfigError(f"conditioning.p_uncond={p_uncond!r} is not allowed: use a probability in [0, 1] "
                              "(0: purely conditional training)")
        self.p_uncond = float(p_uncond)

    @property
    def conditional(self) -> bool:
        """Whether the model takes a condition and samples with classifier-free guidance."""
        return False

    def net_args(self) -> dict:
        """The network's constructor arguments this conditioning decides (``num_classes``, ``context_dim``)."""
        return {}

    def check_net(self, net: nn.Module) -> None:
        """One line when ``net`` was built for another conditioning than this one."""
        want = {"num_classes": self.num_classes, "context_dim": self.context_dim}
        for key, value in want.items():
            got = getattr(net, key, None)
            if got != value:
                raise ConfigError(f"model.{key}={got} but conditioning={type(self).__name__} gives the net {key}={value}: "
                                  "choose the kind with conditioning=none|class|text_small|text_clip and leave "
                                  f"model.{key} as the group sets it")

    # ---- training -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def update_ema(self, enabled: Tensor | None = None) -> None:
        """After each optimizer step (a non-finite step, ``enabled`` False, is skipped)."""

    def on_fit_start(self, datamodule) -> None:
        """What the data tells the conditioning at the start of a fit (the empty prompt of embeddings)."""

    def training_condition(self, batch, generator: torch.Generator) -> Any:
        """The condition the loss gives the raw network for a batch (images, or (images, labels/captions))."""
        return None

    def dropped(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor | None:
        """(B,) bool: which samples are trained unconditionally, each with probability p_uncond (drawn from
        the per-rank noise generator before t and eps); None when p_uncond is 0 (nothing drawn)."""
        if self.p_uncond == 0:
            return None
        return torch.rand((batch_size,), generator=generator, device=device) < self.p_uncond

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """State that is not a parameter or a buffer (the empty prompt of precomputed embeddings)."""

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pass

    # ---- sampling -----------------------------------------------------------------------------
    def sampling_condition(self, cond: Any, device: torch.device, use_ema: bool = True) -> Any:
        """``cond`` checked for ``module.sample`` (labels (N,), encoded prompts (N, L, D), or None)."""
        if cond is None:
            return None
        if is_prompts(cond):
            raise ConfigError(f"prompts={shown(cond)!r} were given to an unconditional model without text conditioning "
                              "(conditioning=none): prompts need a text-conditional model (e.g. experiment=digits_text)")
        return check_labels(cond, None)  # one line: labels need a class-conditional model

    def guidance_args(self, use_ema: bool = True, device: torch.device | None = None) -> dict:
        """What ``ClassifierFreeGuidance`` needs besides the denoiser and the scale."""
        raise ConfigError("guidance needs a class- or text-conditional model; this one is unconditional (conditioning=none)")

    def class_count(self, class_prompts: Sequence[str] | None) -> int | None:
        """How many classes samples can be balanced over (None: no classes to sample)."""
        return None

    def for_labels(self, labels: Tensor, class_prompts: Sequence[str] | None) -> Any:
        """What ``module.sample`` takes for samples of classes ``labels`` (N,): the labels, or their class prompts;
        None when this model cannot be asked for a class."""
        return None

    def balanced(self, num_samples: int, class_prompts: Sequence[str] | None = None) -> tuple[Any, Tensor | None]:
        """(condition, labels (N,)) of N samples cycling 0, 1, .., K-1, 0, .. (by sample index, so any shard of
        them is balanced); (None, None) when there are no classes to sample (unconditional samples)."""
        count = self.class_count(class_prompts)
        if not count:
            return None, None
        labels = balanced_labels(num_samples, count)
        cond = self.for_labels(labels, class_prompts)
        return cond, None if cond is None else labels


class Unconditional(Conditioning):
    """No condition: an unconditional model (``conf/conditioning/none.yaml``)."""

    def __init__(self):
        super().__init__(0.0)


class ClassConditioning(Conditioning):
    """Class labels [0, K); label K is the null class, that a training label becomes with probability p_uncond,
    so one network learns the conditional and the unconditional model (Ho & Salimans 2022, Algorithm 1)."""

    def __init__(self, num_classes: int, p_uncond: float = 0.1):
        super().__init__(p_uncond)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"conditioning.num_classes={num_classes!r} is not allowed: use a positive integer "
                              "(the data's number of classes, data.num_classes)")
        self.num_classes = num_classes
        self._labels_checked = False

    @property
    def conditional(self) -> bool:
        return True

    def net_args(self) -> dict:
        return {"num_classes": self.num_classes}

    def training_condition(self, batch, generator: torch.Generator) -> Tensor:
        """The batch's labels (B,), each dropped to the null class K with probability p_uncond."""
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ConfigError(f"conditioning=class (num_classes={self.num_classes}) needs labelled batches (images, "
                              "labels), but the data gives none: use a labelled dataset or conditioning=none")
        labels = batch[1]
        if not self._labels_checked or labels.device.type == "cpu":  # on an accelerator: the first batch only (a sync)
            check_labels(labels, self.num_classes, name="data labels")
            self._labels_checked = True
        labels = labels.long()
        drop = self.dropped(labels.shape[0], generator, labels.device)  # (B,)
        return labels if drop is None else torch.where(drop, self.num_classes, labels)

    def sampling_condition(self, cond: Any, device: torch.device, use_ema: bool = True) -> Tensor | None:
        if cond is not None and is_prompts(cond):
            raise ConfigError(f"prompts={shown(cond)!r} were given to a class-conditional model without text "
                              "conditioning (conditioning=class): prompts need a text-conditional model (e.g. "
                              "experiment=digits_text); give class_labels= instead")
        labels = check_labels(cond, self.num_classes)
        return None if labels is None else labels.to(device)

    def guidance_args(self, use_ema: bool = True, device: torch.device | None = None) -> dict:
        return {"num_classes": self.num_classes}

    def class_count(self, class_prompts: Sequence[str] | None) -> int:
        return self.num_classes

    def for_labels(self, labels: Tensor, class_prompts: Sequence[str] | None) -> Tensor:
        return labels


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


def is_prompts(cond: Any) -> bool:
    """Whether ``cond`` is prompts (strings) or encoded prompts, rather than class labels."""
    return as_text_condition(cond) is not None or isinstance(cond, str) or (
        isinstance(cond, (list, tuple)) and any(isinstance(c, str) for c in cond))


def shown(cond: Any) -> Any:
    """Prompts as an error message shows them."""
    return "<encoded>" if as_text_condition(cond) is not None else cond if isinstance(cond, str) else list(cond)


def check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompts={prompts!r} is not allowed: give a list of strings, e.g. prompts=['a handwritten three']")
    return list(prompts)


def class_prompts_of(data) -> list[str] | None:
    """One prompt per class of a captioned labelled dataset (a datamodule or a data config): its first caption
    template filled with each class name, e.g. "a handwritten three"; None without class names or templates."""
    names, templates = getattr(data, "class_names", None), getattr(data, "caption_templates", None)
    if not names or not templates:
        return None
    return [str(templates[0]).format(name=name, index=k) for k, name in enumerate(names)]
