"""The peers in the throughput benchmark: diffusers' UNet2DModel and denoising-diffusion-pytorch.

Each step is forward, epsilon-MSE loss, backward, fused Adam: no clip and no EMA (less work than
ours). Each samples with its own DDIM loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from system import System, eager_twin

IMPORT_NAMES = {"diffusers": "diffusers", "lucidrains": "denoising_diffusion_pytorch"}


def build_diffusers(arch: dict, device, channels_last: bool, compile_mode: str | None, autocast) -> System:
    from diffusers import DDIMScheduler, UNet2DModel

    n = len(arch["mult"])
    attn_level = [arch["image_size"] // 2**i in arch["attn"] for i in range(n)]
    net = UNet2DModel(  # google/ddpm-cifar10-32's configuration
        sample_size=arch["image_size"], in_channels=arch["channels"], out_channels=arch["channels"],
        block_out_channels=tuple(arch["base"] * m for m in arch["mult"]), layers_per_block=arch["blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn_level),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn_level)),
        norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1,
    ).to(device)
    eager = eager_twin(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    fwd = net
    if compile_mode:
        fwd = torch.compile(net, mode=compile_mode)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, fused=True)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)

    def train_step(x0):
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
        with autocast():
            x_t = scheduler.add_noise(x0, eps, t)
            loss = F.mse_loss(fwd(x_t, t).sample.float(), eps)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample(x, steps):
        scheduler.set_timesteps(steps)
        with torch.inference_mode(), autocast():
            for t in scheduler.timesteps:
                eps = fwd(x, t).sample
                x = scheduler.step(eps, t, x).prev_sample
        return x

    return System("diffusers", net, eager, train_step, sample, lambda m, x, t: m(x, t).sample, channels_last,
                  "UNet2DModel, DDIMScheduler", fast=fwd)


def build_lucidrains(arch: dict, device, channels_last: bool, compile_mode: str | None, autocast) -> System:
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    net = Unet(dim=arch["base"], dim_mults=arch["mult"], channels=arch["channels"], dropout=0.1, flash_attn=True)
    diffusion = GaussianDiffusion(net, image_size=arch["image_size"], timesteps=1000, beta_schedule="linear",
                                  objective="pred_noise", auto_normalize=False).to(device)
    eager = eager_twin(net)
    if channels_last:
        diffusion.to(memory_format=torch.channels_last)
    if compile_mode:
        net.compile(mode=compile_mode)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, fused=True)

    def train_step(x0):
        with autocast():
            loss = diffusion(x0)  # its own forward: t, noise, q_sample, network, MSE
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sample(x, steps):
        diffusion.sampling_timesteps = steps
        with torch.inference_mode(), autocast():
            return diffusion.ddim_sample(x.shape, return_all_timesteps=False)

    return System("denoising-diffusion-pytorch", net, eager, train_step, sample, lambda m, x, t: m(x, t),
                  channels_last, "Unet (its own layout, not DDPM's), own DDIM")
