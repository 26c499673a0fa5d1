"""The LightningModule: wires network, schedule, denoiser, loss, sampler, optimizer and EMA together.

Each concern lives in its own object; the module only calls them:
    what the network outputs      ``Denoiser``        (ddpm.diffusion.denoiser)
    the training objective        ``loss``            (ddpm.diffusion.losses)
    sampling                      ``sampler``         (ddpm.diffusion.samplers)
    weight averaging              ``EMA``             (ddpm.training.ema)
    speed switches                ``resolve_speed``   (ddpm.training.speed)
    per-t loss logging            ``LossByTimestep``  (ddpm.training.loss_log)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError
from ddpm.training.ema import make_ema
from ddpm.training.loss_log import LossByTimestep
from ddpm.training.speed import check_speed_options, resolve_speed


class DiffusionModule(L.LightningModule):
    """A denoising diffusion model trained with ``loss`` and sampled from its EMA weights.

    Args:
        net: the denoising network, ``net(x_t, t) -> raw output`` of the input's shape.
        schedule: the noise schedule; its tensors become buffers of this module.
        denoiser: ``denoiser(net, schedule) -> Denoiser`` (a Hydra partial of ``Denoiser``): what
            the network predicts, clipping, reverse variance. Used by the loss and every sampler.
        loss: ``loss(denoiser, x0, generator) -> (per-sample loss (B,), t (B,))``.
        sampler: the default sampler, ``sampler(denoiser, schedule, x_T, generator) -> x_0``.
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the net's parameters.
        sample_shape: shape of one sample, e.g. (C, H, W) of the training images.
        warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
        ema_decay: decay of the weight EMA (0.9999 for CIFAR-10 in the DDPM paper).
        ema_warmup: ramp the EMA decay up as min(decay, (1+n)/(10+n)).
        loss_buckets: log the loss averaged over this many equal ranges of t.
        channels_last: NHWC weights and inputs (faster convolutions on tensor cores); ``"auto"``:
            on a GPU.
        compile: ``torch.compile`` mode for the network and its EMA copy (``default``,
            ``reduce-overhead``, ``max-autotune``, ...); ``"auto"``: default mode on a GPU; ``None``
            or ``false``: eager. Compiling leaves the state dict (and so checkpoints) unchanged.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        denoiser: Callable[[nn.Module, NoiseSchedule], Denoiser],
        loss: Callable,
        sampler: Callable,
        optimizer: Callable[..., torch.optim.Optimizer],
        sample_shape: Sequence[int],
        warmup_steps: int = 0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        loss_buckets: int = 10,
        channels_last: bool | str = "auto",
        compile: bool | str | None = "auto",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "schedule", "denoiser", "loss", "sampler", "optimizer"], logger=False)
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps={warmup_steps!r} is not allowed: use 0 (no warm-up) or more")
        self.net = net
        self.schedule = schedule
        self.make_denoiser = denoiser
        self.loss = loss
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.sample_shape = tuple(sample_shape)
        self.warmup_steps = warmup_steps
        self.ema = make_ema(net, ema_decay, ema_warmup)
        self.loss_log = LossByTimestep(loss_buckets, schedule.num_timesteps)
        self.speed_options = check_speed_options(channels_last, compile)
        self.memory_format = torch.contiguous_format
        self._sped_up = False
        self._noise: torch.Generator | None = None
        self.denoiser()  # a bad denoiser option fails here, before any training

    # ---- the model as a denoiser ------------------------------------------------------------
    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """The EMA (default) or raw network as a ``Denoiser``: (x_t, t, cond) -> (x0_hat, eps_hat, log_variance)."""
        return self.make_denoiser(net=self.ema.module if use_ema else self.net, schedule=self.schedule)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        sampler: Callable | None = None,
        cond: Any = None,
    ) -> Tensor:
        """Draw samples (N, *sample_shape) in [-1, 1]; x_T and all noise come from ``generator``."""
        was_training = self.training
        self.eval()
        x_T = torch.randn((num_samples, *self.sample_shape), generator=generator, device=self.device)
        x_T = x_T.contiguous(memory_format=self.memory_format) if x_T.ndim == 4 else x_T
        images = (sampler or self.sampler)(self.denoiser(use_ema), self.schedule, x_T, generator, cond)
        self.train(was_training)
        return images.clamp(-1.0, 1.0)

    # ---- speed switches -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if not self._sped_up:
            self.speed_up(*resolve_speed(*self.speed_options, self.trainer.strategy.root_device))

    def speed_up(self, channels_last: bool = False, compile_mode: str | None = None) -> None:
        """Channels-last weights and/or ``torch.compile`` for the network and its EMA copy.

        The function computed stays the same (tests/test_speed.py compares against eager fp32);
        parameters keep their names, so checkpoints load either way.
        """
        self._sped_up = True
        if channels_last:
            self.memory_format = torch.channels_last
            self.net.to(memory_format=torch.channels_last)
            self.ema.module.to(memory_format=torch.channels_last)
        if compile_mode is not None:
            self.net.compile(mode=compile_mode)
            self.ema.module.compile(mode=compile_mode)

    # ---- training ---------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # Noise for q_sample comes from a generator seeded per rank (and per resume point), so
        # DDP ranks never draw the same t and eps even though seed_everything gave them one seed.
        seed = torch.initial_seed() + 1_000_003 * self.global_rank + 7919 * self.global_step
        self._noise = torch.Generator(device=self.device).manual_seed(seed % 2**63)

    def _is_logging_step(self) -> bool:
        """Whether Lightning writes the logs of the current optimizer step (every ``log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def compute_loss(self, batch) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) of the raw network on a batch (images, or (images, labels)), and their t (B,)."""
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        if x0.ndim == 4:
            x0 = x0.contiguous(memory_format=self.memory_format)
        return self.loss(self.denoiser(use_ema=False), x0, self._noise)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        per_sample, t = self.compute_loss(batch)
        self.loss_log.add(per_sample.detach(), t)
        if self._is_logging_step():
            # The window's sums stay on the device between logging steps and are reduced across
            # ranks only here, so the training loop has no per-step collective or host sync.
            means = self.loss_log.means(lambda x: self.trainer.strategy.reduce(x, reduce_op="sum"))
            self.log("train/loss", means.pop("train/loss"), prog_bar=True, on_step=True, on_epoch=False)
            self.log_dict(means, on_step=True, on_epoch=False)
        return per_sample.mean()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._is_logging_step():
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))  # before clipping

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning would, but let a fused optimizer clip under bf16 or fp32.

        Lightning refuses to clip for optimizers that unscale gradients themselves (fused Adam),
        which only matters when a GradScaler has scaled them (16-mixed). Without a scaler the
        gradients are the true ones, so clipping them directly is exact.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if not gradient_clip_val or scaler is not None or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), gradient_clip_val)

    def optimizer_step(self, *args, **kwargs) -> None:
        # The EMA follows every optimizer step (not every micro-batch under gradient accumulation),
        # before any callback of this batch runs, so a checkpoint written now already includes it.
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.net)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
