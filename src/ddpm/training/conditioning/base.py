"""The calls every conditioning answers, and the two kinds without a text encoder: none and class labels
(see the package docstring)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ddpm.diffusion.conditions import as_text_condition
from ddpm.diffusion.guidance import check_labels
from ddpm.errors import ConfigError
from ddpm.evaluation.sampling import balanced_labels


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
