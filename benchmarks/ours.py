"""Our system in the throughput benchmark: the DiffusionModule train.py builds, stepped by its own methods."""

from __future__ import annotations

import functools

import torch

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.nets.unet import UNet
from ddpm.training.module import DiffusionModule
from system import System, eager_twin

GRADIENT_CLIP_VAL = 1.0  # train.py: trainer.gradient_clip_val=1.0


def build_ours(arch: dict, device, channels_last: bool, compile_mode: str | None, autocast,
               net: torch.nn.Module | None = None, name: str = "ours") -> System:
    """The DiffusionModule train.py builds, with its own speed switches, loss, EMA and denoiser
    (``net``: another network than the U-Net of ``arch``, e.g. a DiT)."""
    if net is None:
        net = UNet(arch["image_size"], arch["channels"], arch["base"], arch["mult"], arch["blocks"], arch["attn"], 0.1)
    module = DiffusionModule(
        net, schedules.linear(num_timesteps=1000), Denoiser, SimpleLoss(), DDIMSampler(20),
        functools.partial(torch.optim.Adam, lr=2e-4, fused=True),  # conf/optimizer/adam.yaml
        sample_shape=(arch["channels"], arch["image_size"], arch["image_size"]), ema_decay=0.9999,
        channels_last=channels_last, compile=compile_mode,
    ).to(device)
    eager = eager_twin(module.net)
    module.speed_up(channels_last=channels_last, compile_mode=compile_mode)  # what setup() does under the Trainer
    module.on_fit_start()  # the noise generator; without a Trainer: rank 0, step 0
    opt = module.configure_optimizers()["optimizer"]
    sample_noise = torch.Generator(device).manual_seed(0)

    # Lightning's automatic optimization of one batch, minus logging and the (constant) LR scheduler:
    # training_step's loss, backward, configure_gradient_clipping (clip_grad_norm_ for a fused
    # optimizer without a GradScaler; the method itself reads the Trainer), optimizer_step (+ EMA).
    def train_step(x0):
        with autocast():
            per_sample, _ = module.compute_loss(x0)
        per_sample.mean().backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), GRADIENT_CLIP_VAL)
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.ema.update_parameters(module.net)

    def sample(x_T, steps):
        with torch.inference_mode(), autocast():
            x_T = x_T.contiguous(memory_format=module.memory_format)
            return DDIMSampler(steps)(module.denoiser(use_ema=True), module.schedule, x_T, sample_noise)

    return System(name, module.net, eager, train_step, sample, lambda m, x, t: m(x, t), channels_last,
                  "step incl. clip + EMA")
