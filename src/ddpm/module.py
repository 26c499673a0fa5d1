"""The LightningModule: wires network, noise schedule, loss, sampler, optimizer and EMA together."""

from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ddpm.ema import make_ema
from ddpm.errors import ConfigError, check_choice
from ddpm.losses import SimpleLoss
from ddpm.samplers import DDPMSampler, Denoiser
from ddpm.schedules import NoiseSchedule


class DiffusionModule(L.LightningModule):
    """A denoising diffusion model trained with the simple loss and sampled from its EMA weights.

    Args:
        net: the denoising network, ``net(x_t, t) -> prediction`` of the input's shape.
        schedule: the noise schedule; its tensors become buffers of this module.
        loss: the training loss, ``loss(net, schedule, x0, generator) -> (per-sample loss, t)``.
        sampler: the default sampler, ``sampler(denoiser, schedule, x_T, generator) -> x_0``.
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the net's parameters.
        sample_shape: shape of one sample, e.g. (C, H, W) of the training images.
        warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
        ema_decay: decay of the weight EMA (0.9999 for CIFAR-10 in the DDPM paper).
        ema_warmup: ramp the EMA decay up as min(decay, (1+n)/(10+n)).
        loss_buckets: log the loss averaged over this many equal ranges of t.
        channels_last: keep the network's weights and inputs in NHWC memory layout (faster
            convolutions on tensor cores); ``"auto"`` turns it on when training on a GPU.
        compile: ``torch.compile`` the network (and its EMA copy, for sampling) with this mode
            (``default``, ``reduce-overhead``, ``max-autotune``, ...); ``"auto"`` compiles with the
            default mode on a GPU and not elsewhere; ``None`` or ``false`` runs eagerly. Compiling
            leaves the state dict (and so checkpoints) unchanged.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        loss: SimpleLoss,
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
        self.save_hyperparameters(ignore=["net", "schedule", "loss", "sampler", "optimizer"], logger=False)
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps={warmup_steps!r} is not allowed: use 0 (no warm-up) or more")
        self.net = net
        self.schedule = schedule
        self.loss = loss
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.sample_shape = tuple(sample_shape)
        self.warmup_steps = warmup_steps
        self.ema = make_ema(net, ema_decay, ema_warmup)
        self.loss_buckets = loss_buckets
        self.channels_last_option = check_choice("channels_last", channels_last, (True, False, "auto"))
        if compile is True:
            compile = "default"
        self.compile_option = check_choice("compile", compile or None, (None, "auto", *COMPILE_MODES))
        self.memory_format = torch.contiguous_format
        self._sped_up = False
        # Running sums of the loss per range of t between two logging steps (reset after each log).
        self.register_buffer("_bucket_sum", torch.zeros(loss_buckets), persistent=False)
        self.register_buffer("_bucket_count", torch.zeros(loss_buckets), persistent=False)
        self._noise: torch.Generator | None = None

    # ---- the model as a denoiser ------------------------------------------------------------
    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """(x_t, t) -> (x0_hat, eps_hat) from the EMA (default) or the raw network."""
        net = self.ema.module if use_ema else self.net
        prediction = self.loss.prediction

        def model(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return prediction.to_x0_eps(self.schedule, net(x_t, t).float(), x_t, t)

        return model

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        sampler: Callable | None = None,
    ) -> Tensor:
        """Draw images (N, C, H, W) in [-1, 1]; x_T and all noise come from ``generator``."""
        was_training = self.training
        self.eval()
        x_T = torch.randn((num_samples, *self.sample_shape), generator=generator, device=self.device)
        x_T = x_T.contiguous(memory_format=self.memory_format) if x_T.ndim == 4 else x_T
        images = (sampler or self.sampler)(self.denoiser(use_ema), self.schedule, x_T, generator)
        self.train(was_training)
        return images.clamp(-1.0, 1.0)

    # ---- speed switches -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._sped_up:
            return
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        self.speed_up(
            channels_last=on_gpu if self.channels_last_option == "auto" else self.channels_last_option,
            compile_mode=("default" if on_gpu else None) if self.compile_option == "auto" else self.compile_option,
        )

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

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        if x0.ndim == 4:
            x0 = x0.contiguous(memory_format=self.memory_format)
        per_sample, t = self.loss(self.net, self.schedule, x0, self._noise)
        self._log_losses(per_sample.detach(), t)
        return per_sample.mean()

    def _log_losses(self, per_sample: Tensor, t: Tensor) -> None:
        """Log train/loss and train/loss_t{lo}-{hi}: means over all ranks and all steps since the last log.

        The sums stay on the device between logging steps and are reduced across ranks only when
        logged, so the training loop has no per-step collective or host sync.
        """
        bucket = t * self.loss_buckets // self.schedule.num_timesteps
        self._bucket_sum.index_add_(0, bucket, per_sample)
        self._bucket_count.index_add_(0, bucket, torch.ones_like(per_sample))
        if not self.trainer._logger_connector.should_update_logs:
            return
        sums = self.trainer.strategy.reduce(self._bucket_sum.clone(), reduce_op="sum")
        counts = self.trainer.strategy.reduce(self._bucket_count.clone(), reduce_op="sum")
        self.log("train/loss", sums.sum() / counts.sum().clamp(min=1), prog_bar=True, on_step=True, on_epoch=False)
        means = sums / counts.clamp(min=1)
        width = self.schedule.num_timesteps / self.loss_buckets
        for i in range(self.loss_buckets):
            name = f"train/loss_t{int(i * width)}-{int((i + 1) * width) - 1}"
            self.log(name, means[i], on_step=True, on_epoch=False)
        self._bucket_sum.zero_()
        self._bucket_count.zero_()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer._logger_connector.should_update_logs:
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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def build_module(cfg) -> DiffusionModule:
    """The DiffusionModule from a composed train config (groups model, schedule, loss, sampler, optimizer)."""
    from hydra.utils import instantiate

    return instantiate(
        cfg.module,
        _convert_="all",  # plain lists in the hyperparameters, so checkpoints load with weights_only
        net=instantiate(cfg.model),
        schedule=instantiate(cfg.schedule),
        loss=instantiate(cfg.loss),
        sampler=instantiate(cfg.sampler),
        optimizer=instantiate(cfg.optimizer),
    )
