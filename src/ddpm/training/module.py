"""The LightningModule: wires network, schedule, denoiser, loss, sampler, optimizer and EMA together.

Each concern lives in its own object; the module only calls them:
    the Gaussian path             ``process``         (ddpm.diffusion.processes: VP, EDM, flow)
    what the network outputs      ``Denoiser``        (ddpm.diffusion.denoiser; continuous_denoiser for EDM, flow)
    the training objective        ``loss``            (ddpm.diffusion.losses)
    sampling                      ``sampler``         (ddpm.diffusion.samplers)
    weight averaging              ``EMA``             (ddpm.training.ema)
    speed switches                ``resolve_speed``   (ddpm.training.speed)
    per-t loss logging            ``LossByTimestep``  (ddpm.training.loss_log; by noise level off VP)
    skipping non-finite steps     ``NonFiniteGuard``  (ddpm.training.nonfinite)
    what the net is conditioned on ``Conditioning``   (ddpm.training.conditioning)
    pixels or latents             ``codec``           (ddpm.training.codec)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.continuous_losses import EDMLoss, FlowMatchingLoss
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance, check_scale
from ddpm.diffusion.process_sampler import check_sampler
from ddpm.diffusion.processes import GaussianProcess, VPProcess, process_name
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError
from ddpm.training.checkpoints import check_steps_left, current_name
from ddpm.training.codec import PixelCodec
from ddpm.training.conditioning import Conditioning, conditioning_of
from ddpm.training.ema import make_ema
from ddpm.training.loss_log import LossByNoiseLevel, LossByTimestep
from ddpm.training.lr_schedule import warmup_cosine_lr
from ddpm.training.nonfinite import NonFiniteGuard
from ddpm.training.optimizer_settings import configured_settings, reapply_settings
from ddpm.training.speed import check_speed_options, resolve_speed
from ddpm.training.step_noise import seed_step


class DiffusionModule(L.LightningModule):
    """A denoising diffusion model trained with ``loss`` and sampled from its EMA weights.

    Args:
        net: the denoising network, ``net(x_t, t) -> raw output`` of the input's shape.
        schedule: the VP chain's noise schedule; its tensors become buffers of this module. None for a
            process of another kind (EDM, flow), which has no beta schedule.
        denoiser: ``denoiser(net, schedule) -> Denoiser`` (a Hydra partial of ``Denoiser``): what
            the network predicts, clipping, reverse variance; on EDM or flow ``denoiser(net, process) ->
            ContinuousDenoiser`` (prediction and preconditioning). Used by the loss and every sampler.
        loss: ``loss(denoiser, x0, generator) -> (per-sample loss (B,), t (B,))``.
        sampler: the default sampler, ``sampler(denoiser, space, x_T, generator) -> x_0``, ``space`` the
            schedule (VP) or the process (EDM, flow).
        process: the Gaussian path x_t = alpha(t) x0 + sigma(t) eps (``conf/process/``): ``VPProcess`` (the
            schedule's discrete chain; None means it), ``EDMProcess`` or ``FlowProcess``.
        optimizer: a partial optimizer (Hydra ``_partial_``), called with the net's parameters.
        sample_shape: shape of one sample, e.g. (C, H, W) of the training images.
        lr_schedule: ``lr_schedule(optimizer) -> LambdaLR`` (a Hydra partial, ``conf/lr_schedule/``): a linear
            warm-up, then constant or a half cosine to 0 at ``trainer.max_steps`` (``training.lr_schedule``).
            None: the configured rate throughout.
        ema_decay: decay of the weight EMA (0.9999 for CIFAR-10 in the DDPM paper).
        ema_warmup: ramp the EMA decay up as min(decay, (1+n)/(10+n)).
        loss_buckets: log the loss averaged over this many equal ranges of t.
        channels_last: NHWC weights and inputs (faster convolutions on tensor cores); ``"auto"``:
            on a GPU.
        compile: ``torch.compile`` mode for the network and its EMA copy (``default``,
            ``reduce-overhead``, ``max-autotune``, ...); ``"auto"``: default mode on a GPU; ``None``
            or ``false``: eager. Compiling leaves the state dict (and so checkpoints) unchanged.
        max_nonfinite_steps: a step whose loss or gradient is not finite is skipped (weights, optimizer
            and EMA untouched) and counted (``train/nonfinite_steps``); this many in a row stop the run.
        guidance: ``guidance(denoiser=, num_classes=, scale=) -> guided denoiser`` (a Hydra partial of
            ``ClassifierFreeGuidance``, ``conf/guidance/``): how a conditional model is sampled with
            labels, and its default scale. None: ``ClassifierFreeGuidance``'s defaults.
        conditioning: what the net is conditioned on (``conf/conditioning/``, ``ddpm.training.conditioning``):
            it owns the null condition, the dropout of training conditions (p_uncond), a text encoder and
            its EMA. None: the net's kind (an unconditional net: none; ``net.num_classes``: class labels
            with p_uncond 0.1; ``net.context_dim``: precomputed prompt embeddings).
        codec: where data enter and samples leave (``conf/codec/``, ``ddpm.training.codec``): ``encode`` a
            training batch's images to what the diffusion runs on, ``decode`` samples to images. None:
            pixels (the identity); ``LatentCodec``: latent diffusion on a frozen autoencoder, and
            ``sample_shape`` is then the latent shape (c, h, w).
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
        lr_schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR] | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        loss_buckets: int = 10,
        channels_last: bool | str = "auto",
        compile: bool | str | None = "auto",
        max_nonfinite_steps: int = 20,
        guidance: Callable[..., ClassifierFreeGuidance] | None = None,
        conditioning: Conditioning | None = None,
        codec: PixelCodec | None = None,
        process: GaussianProcess | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "schedule", "denoiser", "loss", "sampler", "optimizer", "guidance",
                                          "conditioning", "codec", "lr_schedule", "process"], logger=False)
        self.conditioning = conditioning if conditioning is not None else conditioning_of(net)
        self.conditioning.check_net(net)
        self.guidance = guidance or ClassifierFreeGuidance
        self.codec = codec if codec is not None else PixelCodec()
        self.net = net
        self.process = check_process(process, schedule, net, loss)
        self.schedule = schedule
        self.make_denoiser = denoiser
        self.loss = loss
        self.sampler = sampler
        self.optimizer_factory = optimizer
        self.sample_shape = tuple(sample_shape)
        self.lr_schedule = lr_schedule or warmup_cosine_lr
        self.ema = make_ema(net, ema_decay, ema_warmup)
        self.loss_log = (LossByTimestep(loss_buckets, schedule.num_timesteps) if self.is_vp
                         else LossByNoiseLevel(loss_buckets, self.process.noise_level))
        self.speed_options = check_speed_options(channels_last, compile)
        self.memory_format = torch.contiguous_format
        self._sped_up = False
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._noise: torch.Generator | None = None
        self._noise_step = -1  # the optimizer step the noise generator was last seeded for
        self._finite: Tensor | None = None  # this step's device-side finite flag
        denoiser = self.denoiser()  # a bad denoiser option fails here, before any training
        self.codec.check_denoiser(denoiser)
        getattr(loss, "check", lambda _: None)(denoiser)  # and a loss that cannot train this network's output
        check_sampler(sampler, self.process)  # and a sampler that does not apply to the process
        if self.conditional:
            self.guidance(denoiser=denoiser, num_classes=self.num_classes)  # and a bad guidance option
        self._register_load_state_dict_pre_hook(renamed_state, with_module=True)

    @property
    def is_vp(self) -> bool:
        """Whether the model is trained on the discrete VP chain (``process=vp``) rather than EDM or flow."""
        return isinstance(self.process, VPProcess)

    @property
    def sampling_space(self) -> NoiseSchedule | GaussianProcess:
        """What the samplers are called with besides the denoiser: the schedule (VP), else the process."""
        return self.schedule if self.is_vp else self.process

    @property
    def conditional(self) -> bool:
        """Whether the model takes a condition (class labels or text prompts) and samples with guidance."""
        return self.conditioning.conditional

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional model (label K: the null class); None otherwise."""
        return self.conditioning.num_classes

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains: the network's parameters, and a jointly trained text encoder's."""
        return [*self.net.parameters(), *self.conditioning.trainable_parameters()]

    # ---- the model as a denoiser ------------------------------------------------------------
    def denoiser(self, use_ema: bool = True) -> Denoiser | ContinuousDenoiser:
        """The EMA (default) or raw network as a ``Denoiser``: (x_t, t, cond) -> (x0_hat, eps_hat, log_variance);
        on EDM or flow a ``ContinuousDenoiser``: (x_t, t, cond) -> x0_hat."""
        net = self.ema.module if use_ema else self.net
        if self.is_vp:
            return self.make_denoiser(net=net, schedule=self.schedule)
        return self.make_denoiser(net=net, process=self.process)

    def guided(self, use_ema: bool = True, guidance_scale: float | None = None) -> ClassifierFreeGuidance:
        """The (EMA) denoiser of a conditional model under classifier-free guidance at ``guidance_scale``
        (s = 1 + w; None: the run's configured scale)."""
        scale = {} if guidance_scale is None else {"scale": check_scale(guidance_scale)}
        return self.guidance(denoiser=self.denoiser(use_ema), **self.conditioning.guidance_args(use_ema, self.device),
                             **scale)

    @property
    def guidance_scale(self) -> float | None:
        """The scale conditional samples are drawn at by default (None for an unconditional model)."""
        return self.guided().scale if self.conditional else None

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        sampler: Callable | None = None,
        cond: Any = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Draw samples in [-1, 1], decoded by the codec (N, C, H, W) (pixels: (N, *sample_shape)); x_T and all
        noise come from ``generator``.

        ``cond``: class labels (N,) in [0, num_classes) of a class-conditional model, or prompts
        (list of N strings, or an encoded ``TextCondition``) of a text-conditional one, sampled with
        classifier-free guidance at ``guidance_scale`` (s = 1 + w; None: the run's scale); None:
        unconditional samples (the null class, the empty prompt). Labels, prompts or a scale the
        model cannot take are a ConfigError.
        """
        if not self.conditional and guidance_scale is not None:
            raise ConfigError(f"guidance_scale={guidance_scale!r} needs a class-conditional or text model; this one is "
                              "unconditional (conditioning=none): leave guidance_scale unset")
        labels = self.conditioning.sampling_condition(cond, self.device, use_ema)
        count = None if labels is None else len(labels[0] if isinstance(labels, tuple) else labels)
        if labels is not None and count != num_samples:
            raise ConfigError(f"{count} conditions (labels or prompts) for {num_samples} samples: give one per sample")
        if labels is not None:
            denoiser = self.guided(use_ema, guidance_scale)
        else:  # the unconditional model: the null class, the empty prompt
            denoiser = self.guided(use_ema, 0.0) if self.conditional else self.denoiser(use_ema)
        sampler = sampler or self.sampler
        check_sampler(sampler, self.process)
        was_training = self.training
        self.eval()
        x_T = torch.randn((num_samples, *self.sample_shape), generator=generator, device=self.device)
        x_T = x_T.contiguous(memory_format=self.memory_format) if x_T.ndim == 4 else x_T
        images = self.codec.decode(sampler(denoiser, self.sampling_space, x_T, generator, labels))
        self.train(was_training)
        return images.clamp(-1.0, 1.0)

    # ---- speed switches -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if not self._sped_up:
            self.speed_up(*resolve_speed(*self.speed_options, self.trainer.strategy.root_device))

    def speed_up(self, channels_last: bool = False, compile_mode: str | None = None) -> None:
        """Channels-last weights and/or ``torch.compile`` for the network and its EMA copy.

        The function computed stays the same (tests/unit/training/test_speed.py compares against eager fp32);
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
        self._noise = torch.Generator(device=self.device)
        self._run_seed = torch.initial_seed()  # the run's seed, before _seed_noise reseeds the global generators
        self._seed_noise(global_generators=False)  # the data loaders are made after this with the run's seed
        self.conditioning.on_fit_start(getattr(self._trainer, "datamodule", None))
        self.codec.on_fit_start(self)  # a latent codec's scale factor (auto) and cache
        self._noise_step = -1  # the first training step seeds all again, once Lightning has restored global_step

    def _seed_noise(self, global_generators: bool = True) -> None:
        """Seed the generator of t and eps (and torch's global ones) for this rank and optimizer step
        (``training.step_noise``: a resumed run draws the noise of the uninterrupted one)."""
        seed_step(self._noise, self._run_seed, self.global_rank, self.global_step, global_generators)
        self._noise_step = self.global_step

    def _is_logging_step(self) -> bool:
        """Whether Lightning writes the logs of the current optimizer step (every ``log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def compute_loss(self, batch) -> tuple[Tensor, Tensor]:
        """Per-sample losses (B,) of the raw network on a batch (images, or (images, labels or captions)), and
        their t (B,). The condition is the conditioning's (``training_condition``: labels or prompts, each
        dropped to the null condition with probability p_uncond, drawn from the per-rank noise generator
        before t and eps), so one network learns both fields (Ho & Salimans 2022, Algorithm 1)."""
        x0 = self.codec.encode(batch[0] if isinstance(batch, (list, tuple)) else batch, self._noise)  # (B, *sample_shape)
        if x0.ndim == 4:
            x0 = x0.contiguous(memory_format=self.memory_format)
        cond = self.conditioning.training_condition(batch, self._noise)
        return self.loss(self.denoiser(use_ema=False), x0, self._noise, cond)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self._noise_step != self.global_step:
            self._seed_noise()
        per_sample, t = self.compute_loss(batch)
        self.loss_log.add(per_sample.detach(), t, getattr(self.loss, "terms", None))  # the hybrid loss's mse and vb
        if self._is_logging_step():
            # The window's sums stay on the device between logging steps and are reduced across
            # ranks only here, so the training loop has no per-step collective or host sync.
            means = self.loss_log.means(lambda x: self.trainer.strategy.reduce(x, reduce_op="sum"))
            self.log("train/loss", means.pop("train/loss"), prog_bar=True, on_step=True, on_epoch=False)
            self.log_dict(means, on_step=True, on_epoch=False)
        self._loss = per_sample.mean()
        return self._loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        loss = self._loss if self.trainer.world_size == 1 else None
        self._finite, grad_norm = self.nonfinite.check(loss, grads, optimizer, scaled)
        if self._is_logging_step():
            self.log("train/grad_norm", grad_norm)  # before clipping
            self.log("train/nonfinite_steps", torch.as_tensor(self.nonfinite.total, dtype=torch.float32))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # global_step counts this step already; the count is read on the host at logging steps only
        # (every step on a CPU, where reading costs nothing).
        if self.device.type == "cpu" or self.trainer.log_every_n_steps and self.global_step % self.trainer.log_every_n_steps == 0:
            self.nonfinite.stop_if_too_many(self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["process"] = process_name(self.process)  # a resume or evaluation as another process is one line
        checkpoint["nonfinite_steps"] = self.nonfinite.state_dict()
        self.conditioning.on_save_checkpoint(checkpoint)
        self.codec.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "nonfinite_steps" in checkpoint:
            self.nonfinite.load_state_dict(checkpoint["nonfinite_steps"])
        self.conditioning.on_load_checkpoint(checkpoint)
        self.codec.on_load_checkpoint(checkpoint)
        check_steps_left(self, checkpoint)

    def on_train_start(self) -> None:
        """On a resume, the optimizer settings of the config where they differ from the checkpoint's
        (``optimizer.lr=...``, ``optimizer.weight_decay=...``, betas, eps), one line each."""
        reapply_settings(self.lr_schedulers(), self._configured_groups)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning would, but let a fused optimizer clip under bf16 or fp32.

        Lightning refuses to clip for optimizers that unscale gradients themselves (fused Adam),
        which only matters when a GradScaler has scaled them (16-mixed). Without a scaler the
        gradients are the true ones, so clipping them directly is exact.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if not gradient_clip_val or scaler is not None or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), gradient_clip_val)

    def optimizer_step(self, *args, **kwargs) -> None:
        # The EMA follows every optimizer step (not every micro-batch under gradient accumulation),
        # before any callback of this batch runs, so a checkpoint written now already includes it.
        # A non-finite step was skipped by the optimizer (NonFiniteGuard); the EMA skips it too.
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.net, enabled=self._finite)
        self.conditioning.update_ema(self._finite)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        # the optimizer's hyper-parameters as configured (a resume restores the checkpoint's; on_train_start re-applies)
        self._configured_groups = configured_settings(optimizer)
        scheduler = self.lr_schedule(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_process(process: GaussianProcess | None, schedule: NoiseSchedule | None, net: nn.Module,
                  loss: Callable) -> GaussianProcess:
    """The module's process (None: the schedule's VP chain), or a ConfigError of one line for what only one kind
    of process has: a beta schedule, a learned variance and the discrete losses are VP's; EDM and flow need none."""
    if process is None or isinstance(process, VPProcess):
        if schedule is None:
            raise ConfigError("process=vp needs a noise schedule (schedule=linear|cosine|...), got schedule=null")
        return process if process is not None else VPProcess(schedule)
    name = process_name(process)
    if schedule is not None:
        raise ConfigError(f"a noise schedule (schedule=...) is a VP option, but process={name} has no beta schedule: "
                          "drop the schedule override (its noise levels are the process's own options)")
    if getattr(net, "learn_sigma", False):
        raise ConfigError(f"model.learn_sigma=true (a learned reverse variance, Improved DDPM) applies to process=vp "
                          f"only; process={name} has no discrete reverse steps: set model.learn_sigma=false")
    if not isinstance(loss, (EDMLoss, FlowMatchingLoss)):
        raise ConfigError(f"loss={type(loss).__name__} trains the discrete VP chain; process={name} trains with "
                          f"loss={'edm' if name == 'edm' else 'flow_matching|edm'}")
    return process


def renamed_state(module, state_dict, prefix, *args) -> None:
    """Names in checkpoints from before the conditioning object and the codec (``ddpm.training.checkpoints``'
    ``current_name``): the text encoder was ``text.``, a latent model's buffers were the module's own."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + current_name(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)
