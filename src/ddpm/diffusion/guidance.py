"""Classifier-free guidance (Ho & Salimans 2022): a Denoiser wrapper that moves the conditional
prediction further from the unconditional one.

    guided = ClassifierFreeGuidance(denoiser, num_classes, scale=s)
    guided(x_t, t, labels) -> DenoiserOutput(x0, eps, log_variance)     (the Denoiser's signature)

Convention (diffusers, DiT): **s = 1 + w**, with w the guidance weight of Ho & Salimans (their Eq. 6):

    eps~ = eps_u + s (eps_c - eps_u)        s = 1: the conditional model, s = 0: the unconditional one

eps_c = eps(x_t, t, label) and eps_u = eps(x_t, t, null class) come from ONE network call on the
batch [x_t; x_t] with labels [label; null]. Guidance acts on the eps implied by any
parameterization (eps, x0 or v nets: each half's raw output is converted to eps *without*
clipping), on every channel; x0 follows from the guided eps and is clipped (eps recomputed) when
the wrapped denoiser clips. A learned variance (2C-channel net) is not guided: the conditional
half's is used (GLIDE, DiT). So every sampler (DDPM, DDIM, DPM-Solver++) takes the wrapper as its
denoiser unchanged.

Options:
    interval (t_lo, t_hi): guide only at timesteps t_lo <= t <= t_hi and sample the conditional
        model (s = 1) elsewhere (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
        Improves Sample and Distribution Quality in Diffusion Models"; they give the interval in
        noise levels sigma, here it is in the schedule's integer timesteps 0..T-1).
    rescale phi: (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
        Sec. 3.4, Eqs. 15-18 and Algorithm 2) scale the guided eps~ back to the standard deviation
        of eps_c, per sample over all non-batch dimensions, and blend:
            eps_r = eps~ * std(eps_c) / std(eps~),   eps = phi eps_r + (1 - phi) eps~
        (std with Bessel's correction, as torch.std in their Algorithm 2; applied to eps as
        diffusers' ``rescale_noise_cfg`` does).

Text prompts: for a text-conditional network the condition is a ``TextCondition`` (encoded prompts,
``ddpm.diffusion.conditions``) and the unconditional half gets ``null_condition``, the encoded empty
prompt "" (1, L, D) (Stable Diffusion's convention), repeated over the batch.

Continuous-time processes (EDM, flow): wrapping a ``continuous_denoiser.ContinuousDenoiser`` the wrapper is
that denoiser's kind too, ``guided(x_t, t, cond) -> x0_hat`` (the ``ode_samplers`` interface): eps_c and eps_u
from one call, the same ``guided_eps``, x0 = (x_t - sigma eps) / alpha, no clipping. The interval is then
[nu_lo, nu_hi] in noise levels nu = sigma / alpha (EDM's sigma), as Kynkaanniemi et al. give it.

Shapes: x_t (B, ...) of the data's shape; t (B,) integer timesteps (a continuous process's times); labels (B,)
int64 in [0, num_classes), or TextCondition (B, L, D) with mask (B, L).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddpm.diffusion.conditions import TextCondition, cat_conditions
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.denoiser import Denoiser, DenoiserOutput
from ddpm.errors import ConfigError

DEFAULT_SCALE = 1.5  # conf/guidance/default.yaml's: on digits_cfg the best classifier FD, with 99% accuracy


def check_labels(labels, num_classes: int | None, name: str = "cond") -> Tensor | None:
    """``labels`` as an int64 tensor (B,), or a ConfigError naming the first label outside [0, num_classes)."""
    if labels is None:
        return None
    if num_classes is None:
        raise ConfigError(f"{name}= (class labels) was given to an unconditional model (model.num_classes=null): "
                          "class labels need a class-conditional model")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"{name} must be integer class labels of shape (N,), got {labels.dtype} of shape {tuple(labels.shape)}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ConfigError(f"class label {int(labels[bad][0])} is not allowed: labels must lie in [0, {num_classes}) "
                          f"(the model has num_classes={num_classes})")
    return labels.long()


def check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 or scale == float("inf"):
        raise ConfigError(f"guidance scale={scale!r} is not allowed: use a number >= 0 (s = 1 + w: 1 conditional, "
                          "0 unconditional, > 1 guided)")
    return float(scale)


def guided_eps(eps_c: Tensor, eps_u: Tensor, scale: float | Tensor, rescale: float = 0.0) -> Tensor:
    """The guided eps of a conditional and an unconditional one (B, ...), at scale s (a float, or per sample (B,)).

    1. eps~ = eps_u + s (eps_c - eps_u), s = 1 + w  (Ho & Salimans 2022, Eq. 6)
    2. rescale phi > 0: towards std(eps_c), per sample over all non-batch dims  (Lin et al. 2024, Eqs. 15-18)
    """
    s = scale if isinstance(scale, float) else scale.view(len(eps_c), *([1] * (eps_c.ndim - 1)))
    eps = eps_u + s * (eps_c - eps_u)
    if rescale > 0:
        dims = list(range(1, eps_c.ndim))
        ratio = eps_c.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True)
        eps = rescale * (eps * ratio) + (1 - rescale) * eps
    return eps


class ClassifierFreeGuidance:
    """``denoiser`` of a class-conditional network, guided at scale s = 1 + w (module docstring).

    Args:
        denoiser: the conditional model's ``Denoiser`` (or ``ContinuousDenoiser``); its net takes
            ``net(x_t, t, labels)`` and labels == num_classes is the null class (the unconditional model).
        num_classes: the number of classes; ``num_classes`` is the null label (None for a text model).
        scale: s >= 0; 1 gives the conditional denoiser exactly, 0 the unconditional one.
        interval: None (guide at every t) or (t_lo, t_hi), integer timesteps: guide only there (a continuous
            denoiser: (nu_lo, nu_hi), noise levels sigma / alpha).
        rescale: phi in [0, 1] of Lin et al. 2024 (0: plain guidance).
        null_condition: a text model's empty prompt, ``TextCondition`` (1, L, D); None for labels.
    """

    def __init__(self, denoiser: Denoiser | ContinuousDenoiser, num_classes: int, scale: float = DEFAULT_SCALE,
                 interval: Sequence[int] | Sequence[float] | None = None, rescale: float = 0.0,
                 null_condition: TextCondition | None = None):
        self.denoiser, self.num_classes, self.scale = denoiser, num_classes, check_scale(scale)
        self.null_condition = null_condition
        self.continuous = isinstance(denoiser, ContinuousDenoiser)
        if interval is not None:
            interval = tuple(interval)
            number = (int, float) if self.continuous else int
            if len(interval) != 2 or not all(isinstance(v, number) and not isinstance(v, bool) for v in interval) \
                    or not 0 <= interval[0] <= interval[1]:
                what = "noise levels sigma" if self.continuous else "integer timesteps"
                raise ConfigError(f"guidance.interval={list(interval)!r} is not allowed: use null or [lo, hi], "
                                  f"{what} with 0 <= lo <= hi")
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0:
            raise ConfigError(f"guidance.rescale={rescale!r} is not allowed: use phi in [0, 1] (0: no rescale)")
        self.interval, self.rescale = interval, float(rescale)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> DenoiserOutput | Tensor:
        if self.continuous:
            return self.guided_x0(x_t, t, cond)
        if cond is None:  # no labels: the unconditional model (the null class, or the empty prompt)
            return self.denoiser(x_t, t, self.null_like(x_t.shape[0], x_t.device))
        cond = cond.to(x_t.device)
        scale = self.scale_at(t)  # (B,) on the device, or a float when it is the same for all
        if isinstance(scale, float) and scale == 1.0:
            return self.denoiser(x_t, t, cond)  # the conditional model, one call on B samples
        if isinstance(scale, float) and scale == 0.0:
            return self.denoiser(x_t, t, self.null_like(x_t.shape[0], x_t.device))
        return self.guided(x_t, t, cond, scale)

    def null_like(self, batch: int, device: torch.device) -> TextCondition | Tensor | None:
        """The null condition for ``batch`` samples: the empty prompt (B, L, D) of a text model, the null
        class (B,) of a class-conditional one (None: the nets' own default, also the null class)."""
        if self.null_condition is not None:
            return self.null_condition.to(device).expand(batch)
        return None if self.num_classes is None else torch.full((batch,), self.num_classes, dtype=torch.long, device=device)

    def scale_at(self, t: Tensor) -> float | Tensor:
        """s where t lies in the interval, 1 elsewhere; a float when that is one value for the batch."""
        if self.interval is None or self.scale == 1.0:
            return self.scale
        lo, hi = self.interval
        where = self.denoiser.process.noise_level(t) if self.continuous else t  # (B,)
        inside = (where >= lo) & (where <= hi)  # (B,)
        if bool(inside.all()):  # one host read per step; samplers give all samples one t
            return self.scale
        if not bool(inside.any()):
            return 1.0
        return torch.where(inside, self.scale, 1.0).float()  # (B,)

    def guided(self, x_t: Tensor, t: Tensor, cond: Tensor, scale: float | Tensor) -> DenoiserOutput:
        d, B = self.denoiser, x_t.shape[0]
        schedule, parameterization = d.schedule, d.parameterization
        # 1. both halves in one batched call: [x_t; x_t] with labels [y; null]  (Ho & Salimans 2022, Alg. 2)
        null = self.null_like(B, x_t.device)  # (B,) null class, or (B, L, D) empty prompt
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
        out = d.net_output(x2, t2, cat_conditions(cond, null))  # (2B, ...)
        # 2. each half's eps implied by the parameterization, unclipped; a learned-variance net's
        #    second C channels (v) are not guided: the conditional half's variance is used (GLIDE, DiT)
        prediction, v = d.split_output(out, x2)  # (2B, C, ...), (2B, C, ...) or None
        _, eps2 = parameterization.to_x0_eps(schedule, prediction, x2, t2)
        eps_c, eps_u = eps2[:B], eps2[B:]
        # 3.-4. eps~ = eps_u + s (eps_c - eps_u), rescaled towards std(eps_c)
        eps = guided_eps(eps_c, eps_u, scale, self.rescale)
        # 5. x0 from the guided eps; clipped, and eps recomputed from it, when the denoiser clips
        x0 = schedule.x0_from_eps(x_t, t, eps)
        if d.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = schedule.eps_from_x0(x_t, t, x0)
        return DenoiserOutput(x0, eps, d.log_variance(t, x_t, None if v is None else v[:B]))

    def guided_x0(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        """x0_hat (B, ...) of a continuous denoiser under guidance (the ``ode_samplers`` interface; module doc)."""
        d = self.denoiser
        if cond is None:  # the unconditional model: the null class, the empty prompt
            return d(x_t, t, self.null_like(x_t.shape[0], x_t.device))
        cond = cond.to(x_t.device)
        scale = self.scale_at(t)
        if isinstance(scale, float) and scale in (0.0, 1.0):  # the unconditional or the conditional model, one call
            return d(x_t, t, cond if scale == 1.0 else self.null_like(x_t.shape[0], x_t.device))
        B, t = x_t.shape[0], d._time(x_t, t)  # t (B,)
        # 1. both halves in one call: [x_t; x_t] with [cond; null]
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
        _, eps2 = d.predict(x2, t2, cat_conditions(cond, self.null_like(B, x_t.device)))  # (2B, ...)
        # 2. eps~ = eps_u + s (eps_c - eps_u), rescaled; 3. x0 = (x_t - sigma eps~) / alpha
        eps = guided_eps(eps2[:B], eps2[B:], scale, self.rescale)
        return d.clipped(d.process.x0_of(x_t.to(eps.dtype), eps, t))  # 4. clipped when the denoiser clips
