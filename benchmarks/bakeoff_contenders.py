"""The contenders of the bake-off (``benchmarks/bakeoff.py``): each system trained by its own library code.

A :class:`Contender` is what the shared loop drives. ``train_step(x0)`` takes one batch of images in
[-1, 1], (B, C, H, W) on the device, and does everything the system's own training script does with a
batch (noise, loss, backward, clipping, optimizer, LR schedule, EMA); ``sample(n, seed)`` draws n images
in [-1, 1] from the system's averaged weights with its own recommended fast sampler. Only the loop that
feeds batches and times the steps is ours.

    ours          ddpm.training.module.DiffusionModule built from a recipe of conf/ (Hydra compose), stepped
                  as Lightning's automatic optimization steps it (loss, backward, clip, optimizer, LR scheduler,
                  EMA); sampled by module.sample with the recipe's evaluation sampler
    diffusers     UNet2DModel + DDPMScheduler + EMAModel + get_scheduler("cosine"), the step of
                  examples/unconditional_image_generation/train_unconditional.py; sampled by DDPMPipeline
                  with DPMSolverMultistepScheduler (the scheduler diffusers recommends for fast sampling), with
                  thresholding and order 3, as its docs advise for pixel-space models and unconditional sampling
    lucidrains    denoising-diffusion-pytorch: Unet + GaussianDiffusion with its defaults (pred_v, sigmoid
                  schedule), the step of its Trainer (Adam, clip 1.0, ema_pytorch EMA every 10 steps);
                  sampled by GaussianDiffusion.sample with DDIM (its sampling_timesteps)
    kdiffusion    k-diffusion's EDM training: configs/config_mnist.json of v0.1.1.post1 (image_v1 model,
                  Karras preconditioning, soft-min-SNR weighting, cosine-interpolated sigma density,
                  Karras augmentation, AdamW, EMAWarmup) and the step of its train.py; sampled as its
                  train.py's demo does (DPM-Solver++(2M) SDE, eta 0, Heun, 50 Karras sigmas)

Each peer runs at its documented defaults ("defaults") or with its learning rate and warm-up scaled to
the budget ("scaled": ``scaled_lr``, a warm-up of 5% of the steps the budget buys, and the decay, where
the recipe has one, ending at the budget).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
WARMUP_FRACTION = 0.05  # "scaled" rows: warm-up over this fraction of the steps the budget buys
PARAM_TOLERANCE = 0.05  # every network within 5% of ours in parameter count
PEER_LEVELS = 3  # the peers' U-Nets: three resolutions (28 -> 14 -> 7 on MNIST), as their MNIST configs have


@dataclass
class Contender:
    """One row of the bake-off: a system in one setting, ready to train and sample."""

    name: str  # the row, e.g. "diffusers (scaled)"
    system: str  # ours | diffusers | lucidrains | kdiffusion
    setting: str  # the recipe for ours; defaults | scaled for a peer
    net: nn.Module  # the trained network (its parameter count is what is matched)
    train_step: Callable[[Tensor], Tensor]  # x0 (B, C, H, W) in [-1, 1] -> the batch loss (0-dim, not synced)
    sample: Callable[[int, int], Tensor]  # (n, seed) -> (n, C, H, W) in [-1, 1], from the averaged weights
    sampler: str  # what sample() runs
    nfe: int  # network evaluations per sampled image
    recipe: dict = field(default_factory=dict)  # optimizer, LR schedule, EMA, loss... as run
    handle: object = None  # the system's own top-level object (module, pipeline, GaussianDiffusion, Denoiser)
    config: object = None  # ours: the composed train config (to save the row as a run evaluate.py can load)
    save: Callable[[Path], None] | None = None  # a peer: write its averaged weights into a folder, its own format

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


@dataclass(frozen=True)
class Setup:
    """What every contender of one run shares."""

    image_size: int
    channels: int
    batch_size: int
    train_images: int  # the size of the training split (the peers' epoch-based schedules)
    device: torch.device
    target_params: int  # ours: the parameter count every peer is matched to
    quick: bool = False  # the --quick smoke run: few sampling steps
    scaled_lr: float = 1e-3


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def closest(build: Callable[..., nn.Module], candidates: list[dict], target: int, what: str) -> tuple[nn.Module, dict]:
    """The network among ``build(**c)`` for ``c`` in ``candidates`` whose parameter count is closest to
    ``target``; a ValueError when even that one is more than 5% off."""
    key = (what, target, tuple(sorted(map(str, candidates))))
    if key in _MATCHED:  # a system's defaults and scaled rows share the search
        return build(**_MATCHED[key]), _MATCHED[key]
    best = None
    for c in candidates:
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialization
                n = count(build(**c))
        except (ValueError, AssertionError, RuntimeError):  # a width its normalization cannot split
            continue
        err = abs(n - target) / target
        if best is None or err < best[0]:
            best = (err, n, c)
    if best is None or best[0] > PARAM_TOLERANCE:
        got = "none" if best is None else f"{best[1]:,} ({best[2]})"
        raise ValueError(f"no {what} network within {PARAM_TOLERANCE:.0%} of {target:,} parameters; closest {got}")
    _MATCHED[key] = best[2]
    return build(**best[2]), best[2]


_MATCHED: dict = {}


def seeded(seed: int, device: torch.device):
    """Fork torch's global generators (CPU and, on CUDA, the device's) and seed them: for libraries whose
    samplers draw from the global generator."""
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    class _Seeded:
        def __enter__(self):
            ctx.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Seeded()


def estimated_steps(setup: Setup, total_steps: int | None) -> int:
    """The steps a scaled row plans its warm-up and decay for: those its defaults row reached in the budget."""
    if not total_steps:
        raise ValueError("a scaled row needs the steps its defaults row reached: run --settings defaults scaled")
    return int(total_steps)


# ---- ours ----------------------------------------------------------------------------------------------
def compose_recipe(overrides: list[str]):
    """The train config of ``python train.py OVERRIDES`` (conf/train.yaml composed with Hydra)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import ddpm.runs.resolvers  # noqa: F401  (the configs' ${ddpm.eq:...}, registered as train.py does)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = "."  # hydra:runtime is not resolvable outside a Hydra app; nothing is written
    return cfg


def build_ours(setup: Setup, recipe: list[str], name: str | None = None, sampler: list[str] | None = None) -> Contender:
    """Our DiffusionModule as ``python train.py RECIPE`` builds it, stepped as Lightning steps it.

    ``sampler``: overrides of the sampler group for the samples scored (default: the recipe's own sampler).
    """
    from hydra.utils import instantiate

    from ddpm.runs.build import build_module
    from ddpm.training.speed import resolve_speed

    cfg = compose_recipe([*recipe, *(sampler or [])])
    module = build_module(cfg, datamodule=_Shape(setup)).to(setup.device)
    module.speed_up(*resolve_speed(*module.speed_options, setup.device))  # what setup() does under the Trainer
    module.on_fit_start()  # the noise generator; without a Trainer: rank 0, step 0
    module._trainer = SimpleNamespace(max_steps=cfg.trainer.max_steps)  # what configure_optimizers reads of a Trainer
    optimizers = module.configure_optimizers()
    module._trainer = None
    opt, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    clip = cfg.trainer.get("gradient_clip_val")
    bf16 = str(cfg.trainer.get("precision", "32")).startswith("bf16") and setup.device.type == "cuda"
    eval_sampler = instantiate(cfg.sampler)

    def train_step(x0: Tensor) -> Tensor:
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=bf16):
            per_sample, _ = module.compute_loss(x0)
        loss = per_sample.mean()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), clip)
        opt.step()
        scheduler.step()
        opt.zero_grad(set_to_none=True)
        module.ema.update_parameters(module.net)
        return loss.detach()

    def sample(n: int, seed: int) -> Tensor:
        generator = torch.Generator(setup.device).manual_seed(seed)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=bf16):
            return module.sample(n, generator=generator, sampler=eval_sampler).float()

    steps = getattr(eval_sampler, "steps", None) or module.schedule.num_timesteps
    nfe = len(eval_sampler.timesteps(module.sampling_space))  # Heun: 2 steps - 1
    return Contender(
        name or f"ours ({' '.join(recipe)})", "ours", " ".join(recipe), module.net, train_step, sample,
        f"{getattr(eval_sampler, 'solver', type(eval_sampler).__name__)} {steps} steps", nfe,
        recipe=dict(optimizer=type(opt).__name__, lr=opt.param_groups[0]["initial_lr"], warmup=cfg.lr_schedule.warmup_steps,
                    lr_decay=f"cosine to 0 at step {cfg.lr_schedule.decay_steps}" if cfg.lr_schedule.decay_steps else "none",
                    ema=f"{module.hparams.ema_decay} (warm-up (1+n)/(10+n))",
                    loss=type(module.loss).__name__,
                    prediction=cfg.denoiser.get("prediction_type") or cfg.denoiser.get("prediction"),
                    schedule=(cfg.get("schedule") or cfg.process)._target_.rsplit(".", 1)[-1], clip=clip,
                    precision="bf16" if bf16 else "fp32"),
        handle=module, config=cfg,
    )


class _Shape:
    """Stands in for the datamodule where build_module only reads the sample shape."""

    def __init__(self, setup: Setup):
        self.sample_shape = (setup.channels, setup.image_size, setup.image_size)


def ours_network(recipe: list[str], image_size: int, channels: int) -> tuple[dict, int]:
    """The recipe's U-Net layout (base width, multipliers, blocks, attention resolutions), the template of the
    diffusers network (diffusers' UNet2DModel is the DDPM U-Net too) and of the peers' resolutions, and its
    parameter count at this image size: what every peer is matched to."""
    from hydra.utils import instantiate

    cfg = compose_recipe(recipe)
    m = cfg.model
    layout = dict(base=m.base_channels, mult=tuple(m.channel_mult), blocks=m.num_res_blocks,
                  attn=tuple(m.attn_resolutions), dropout=m.dropout)
    return layout, count(instantiate(m, image_size=image_size, in_channels=channels))


# ---- diffusers -----------------------------------------------------------------------------------------
def diffusers_unet(setup: Setup, base: int, mult: tuple, blocks: int, attn: tuple, dropout: float = 0.0):
    from diffusers import UNet2DModel

    sizes = [setup.image_size // 2**i for i in range(len(mult))]
    has_attn = [s in attn for s in sizes]
    return UNet2DModel(
        sample_size=setup.image_size, in_channels=setup.channels, out_channels=setup.channels,
        layers_per_block=blocks, block_out_channels=tuple(base * m for m in mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
        norm_num_groups=next(g for g in (32, 16, 8, 4, 2, 1) if base % g == 0), dropout=dropout,
    )


def diffusers_candidates(setup: Setup) -> list[dict]:
    """UNet2DModel layouts of three resolutions with attention at the lowest (the example's 64 px network has it at
    its fifth of six levels), its 2 blocks a level first, widths in steps of 4."""
    lowest = setup.image_size // 2 ** (PEER_LEVELS - 1)
    mults = [(1, 2, 2), (1, 1, 2), (1, 2, 4)]  # the example's widths double, as DDPM's
    return [dict(base=b, mult=m, blocks=k, attn=(lowest,)) for k in (2, 1) for m in mults for b in range(8, 129, 4)]


def build_diffusers(setup: Setup, setting: str, total_steps: int | None, layout: dict) -> Contender:
    """diffusers' unconditional example: its model class, scheduler, optimizer, LR schedule, EMA and step.

    The network is UNet2DModel (the DDPM U-Net) at three resolutions with attention at the lowest, widths,
    multipliers and blocks searched for the parameter match. ``defaults``: AdamW 1e-4, betas (0.95, 0.999), weight
    decay 1e-6, 500 warm-up steps then cosine decay over the example's 100 epochs; ``scaled``: the LR
    ``setup.scaled_lr``, warm-up 5% and the cosine ending at the steps the budget buys.
    """
    from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    net, chosen = closest(lambda **c: diffusers_unet(setup, **c), diffusers_candidates(setup), setup.target_params,
                          "diffusers")
    net = net.to(setup.device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    if setting == "defaults":
        lr, warmup = 1e-4, 500
        horizon = math.ceil(setup.train_images / setup.batch_size) * 100  # len(train_dataloader) * num_epochs
    else:
        horizon = estimated_steps(setup, total_steps)
        lr, warmup = setup.scaled_lr, max(1, round(WARMUP_FRACTION * horizon))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=horizon)
    ema = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=type(net), model_config=net.config)
    ema.to(setup.device)
    steps = 3 if setup.quick else 20
    # DPM-Solver++ as DPMSolverMultistepScheduler's docs advise: thresholding for pixel-space models (x0_hat kept in
    # [-1, 1]; its default, none, leaves an eps-model's high-noise x0_hat unbounded), order 3 for unconditional sampling
    fast = DPMSolverMultistepScheduler.from_config(noise_scheduler.config, thresholding=True, sample_max_value=1.0,
                                                   solver_order=3)
    pipeline = DDPMPipeline(unet=net, scheduler=fast)
    pipeline.set_progress_bar_config(disable=True)

    def train_step(x0: Tensor) -> Tensor:
        noise = torch.randn(x0.shape, device=x0.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device).long()
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        loss = F.mse_loss(net(noisy, timesteps).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        lr_scheduler.step()
        opt.zero_grad()
        ema.step(net.parameters())
        return loss.detach()

    def sample(n: int, seed: int) -> Tensor:
        ema.store(net.parameters())
        ema.copy_to(net.parameters())  # the example samples the EMA weights
        net.eval()
        try:
            generator = torch.Generator(setup.device).manual_seed(seed)
            images = pipeline(batch_size=n, generator=generator, num_inference_steps=steps, output_type="np").images
        finally:
            net.train()
            ema.restore(net.parameters())
        # DDPMPipeline returns (image / 2 + 0.5).clamp(0, 1), NHWC: back to [-1, 1], NCHW
        return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1

    def save(folder: Path) -> None:
        ema.store(net.parameters())
        ema.copy_to(net.parameters())
        try:
            net.save_pretrained(folder)  # config.json + safetensors: UNet2DModel.from_pretrained(folder)
        finally:
            ema.restore(net.parameters())

    return Contender(
        f"diffusers ({setting})", "diffusers", setting, net, train_step, sample,
        f"DDPMPipeline + DPMSolverMultistepScheduler (order 3, thresholding) {steps} steps", steps,
        recipe=dict(optimizer="AdamW", lr=lr, warmup=warmup, lr_decay=f"cosine to 0 at step {horizon}",
                    ema="0.9999, warm-up 1-(1+n)^-3/4", loss="eps MSE", prediction="epsilon",
                    schedule="linear", clip=1.0, precision="fp32", network=f"UNet2DModel {chosen}"),
        handle=pipeline, save=save,
    )


# ---- denoising-diffusion-pytorch -------------------------------------------------------------------------
def lucidrains_unet(setup: Setup, dim: int, dim_mults: tuple):
    from denoising_diffusion_pytorch import Unet

    unet = Unet(dim=dim, dim_mults=dim_mults, channels=setup.channels)
    if setup.image_size % unet.downsample_factor:
        raise ValueError(f"{setup.image_size} px is not divisible by {unet.downsample_factor}")
    return unet


def build_lucidrains(setup: Setup, setting: str, total_steps: int | None, layout: dict) -> Contender:
    """denoising-diffusion-pytorch: ``GaussianDiffusion`` at its defaults around its ``Unet``, stepped as its
    ``Trainer`` steps (Adam 1e-4, betas (0.9, 0.99), gradient clipping 1.0, ``ema_pytorch.EMA`` of decay
    0.995 every 10 steps; no LR schedule). ``scaled``: Adam at ``setup.scaled_lr`` with a linear warm-up of
    5% of the steps (its Trainer has none; the scaled row adds it). Images enter in [0, 1], as its
    Trainer's dataset gives them (``auto_normalize``)."""
    from denoising_diffusion_pytorch import GaussianDiffusion
    from ema_pytorch import EMA

    mults = [(1, 2, 4), (1, 2, 2), (1, 1, 2), (1, 2, 3)]  # its default (1, 2, 4, 8) at three resolutions, and kin
    candidates = [dict(dim=d, dim_mults=m) for m in mults for d in range(8, 129, 2)]
    net, chosen = closest(lambda **c: lucidrains_unet(setup, **c), candidates, setup.target_params, "lucidrains")
    steps = 3 if setup.quick else 50
    diffusion = GaussianDiffusion(net, image_size=setup.image_size, sampling_timesteps=steps).to(setup.device)
    if setting == "defaults":
        lr, warmup = 1e-4, 0
    else:
        lr, warmup = setup.scaled_lr, max(1, round(WARMUP_FRACTION * estimated_steps(setup, total_steps)))
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = EMA(diffusion, beta=0.995, update_every=10).to(setup.device)

    def train_step(x0: Tensor) -> Tensor:
        loss = diffusion((x0 + 1) / 2)  # its dataset gives [0, 1]; GaussianDiffusion normalizes to [-1, 1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        scheduler.step()
        opt.zero_grad()
        ema.update()
        return loss.detach()

    def sample(n: int, seed: int) -> Tensor:
        ema.ema_model.eval()
        with seeded(seed, setup.device), torch.inference_mode():
            images = ema.ema_model.sample(batch_size=n)  # [0, 1] (unnormalized by GaussianDiffusion)
        return images.float() * 2 - 1

    return Contender(
        f"denoising-diffusion-pytorch ({setting})", "lucidrains", setting, net, train_step, sample,
        f"GaussianDiffusion.sample, DDIM {steps} steps", steps,
        recipe=dict(optimizer="Adam", lr=lr, warmup=warmup, lr_decay="none", ema="0.995 every 10 steps (ema_pytorch)",
                    loss="v MSE", prediction=diffusion.objective, schedule="sigmoid", clip=1.0, precision="fp32",
                    network=f"Unet {chosen}"),
        handle=diffusion, save=lambda folder: _save_state(ema.ema_model, folder),
    )


# ---- k-diffusion -----------------------------------------------------------------------------------------
def kdiffusion_config(setup: Setup, c: int, depths: tuple, mapping_out: int = 256) -> dict:
    """configs/config_mnist.json of k-diffusion v0.1.1.post1, with the widths searched for the match."""
    import k_diffusion as K

    levels = len(depths)
    return K.config.load_config({
        "model": {
            "type": "image_v1", "input_channels": setup.channels, "input_size": [setup.image_size] * 2,
            "patch_size": 1, "mapping_out": mapping_out, "depths": list(depths),
            "channels": [c] * (levels - 1) + [2 * c], "self_attn_depths": [False] * (levels - 1) + [True],
            "has_variance": False, "loss_config": "karras", "loss_weighting": "soft-min-snr",
            "dropout_rate": 0.05, "augment_wrapper": True, "augment_prob": 0.12, "sigma_data": 0.6162,
            "sigma_min": 1e-2, "sigma_max": 80, "sigma_sample_density": {"type": "cosine-interpolated"},
        },
        "dataset": {"type": "mnist"},
        "optimizer": {"type": "adamw", "lr": 2e-4, "betas": [0.95, 0.999], "eps": 1e-6, "weight_decay": 1e-3},
        "lr_sched": {"type": "constant", "warmup": 0.0},
        "ema_sched": {"type": "inverse", "power": 0.6667, "max_value": 0.9999},
    })


def build_kdiffusion(setup: Setup, setting: str, total_steps: int | None, layout: dict) -> Contender:
    """k-diffusion's train.py on its MNIST config (v0.1.1.post1). ``scaled``: AdamW at ``setup.scaled_lr``
    and its constant schedule's exponential warm-up with a time constant of 5% of the steps."""
    import k_diffusion as K
    import numpy as np
    from PIL import Image

    depth_sets = [(2, 4, 4), (2, 2, 4), (2, 2, 2), (1, 2, 2), (1, 1, 2)]  # its MNIST config's (2, 4, 4) first
    candidates = [dict(c=c, depths=d, mapping_out=m) for d in depth_sets for m in (256, 128, 64) for c in range(8, 129, 8)]
    _, chosen = closest(lambda **k: K.config.make_model(kdiffusion_config(setup, **k)), candidates,
                        setup.target_params, "k-diffusion")
    config = kdiffusion_config(setup, **chosen)
    model_config, opt_config = config["model"], config["optimizer"]
    inner_model = K.config.make_model(config).to(setup.device)
    inner_model_ema = copy.deepcopy(inner_model)
    wrapper = K.config.make_denoiser_wrapper(config)
    model, model_ema = wrapper(inner_model), wrapper(inner_model_ema)
    if setting == "defaults":
        lr, warmup = opt_config["lr"], config["lr_sched"]["warmup"]
    else:
        tau = WARMUP_FRACTION * estimated_steps(setup, total_steps)
        lr, warmup = setup.scaled_lr, math.exp(-1.0 / max(tau, 1.0))  # lr (1 - warmup^(step+1))
    opt = torch.optim.AdamW(inner_model.param_groups(lr), lr=lr, betas=tuple(opt_config["betas"]),
                            eps=opt_config["eps"], weight_decay=opt_config["weight_decay"])
    # K.utils.ConstantLRWithWarmup passes LRScheduler the `verbose` argument torch 2.14 no longer takes:
    # its closed form, lr (1 - warmup^(step + 1)), as a LambdaLR
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - warmup ** (step + 1))
    ema_sched = K.utils.EMAWarmup(power=config["ema_sched"]["power"], max_value=config["ema_sched"]["max_value"])
    sample_density = K.config.make_sample_density(model_config)
    augment = K.augmentation.KarrasAugmentationPipeline(model_config["augment_prob"])
    sigma_min, sigma_max = model_config["sigma_min"], model_config["sigma_max"]
    steps = 3 if setup.quick else 50

    def augmented(x0: Tensor) -> tuple[Tensor, Tensor]:
        """Its dataset transform, per image: a PIL image through KarrasAugmentationPipeline."""
        pixels = ((x0.detach().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        out = [augment(Image.fromarray(p[0] if p.shape[0] == 1 else np.moveaxis(p, 0, -1))) for p in pixels]
        reals = torch.stack([o[0] for o in out]).to(x0.device, torch.float32)
        return reals, torch.stack([o[2] for o in out]).to(x0.device, torch.float32)

    def train_step(x0: Tensor) -> Tensor:
        reals, aug_cond = augmented(x0)
        noise = torch.randn_like(reals)
        with K.utils.enable_stratified(0, 1):  # enable_stratified_accelerate with one process, no accumulation
            sigma = sample_density([reals.shape[0]], device=reals.device)
        losses = model.loss(reals, noise, sigma, aug_cond=aug_cond)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        K.utils.ema_update(model, model_ema, ema_sched.get_value())
        ema_sched.step()
        return losses.detach().mean()

    def sample(n: int, seed: int) -> Tensor:
        model_ema.eval()
        generator = torch.Generator(setup.device).manual_seed(seed)
        x = torch.randn((n, setup.channels, setup.image_size, setup.image_size), generator=generator,
                        device=setup.device) * sigma_max
        sigmas = K.sampling.get_sigmas_karras(steps, sigma_min, sigma_max, rho=7.0, device=setup.device)
        with seeded(seed, setup.device), torch.inference_mode():
            images = K.sampling.sample_dpmpp_2m_sde(model_ema, x, sigmas, eta=0.0, solver_type="heun", disable=True)
        model_ema.train()
        return images.float()

    return Contender(
        f"k-diffusion ({setting})", "kdiffusion", setting, inner_model, train_step, sample,
        f"DPM-Solver++(2M) SDE eta 0, Heun, {steps} Karras sigmas", steps,
        recipe=dict(optimizer="AdamW", lr=lr, warmup=f"exponential, factor {warmup:.4g}", lr_decay="none",
                    ema="EMAWarmup power 0.6667 max 0.9999", loss="Karras denoiser, soft-min-SNR",
                    prediction="EDM preconditioned", schedule="cosine-interpolated sigma density", clip=1.0,
                    precision="fp32", network=f"image_v1 {chosen}", augmentation="Karras, p 0.12"),
        handle=model_ema, save=lambda folder: _save_state(model_ema, folder),
    )


def _save_state(module: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), folder / "ema.pt")


PEERS = {"diffusers": build_diffusers, "lucidrains": build_lucidrains, "kdiffusion": build_kdiffusion}
IMPORTS = {"diffusers": "diffusers", "lucidrains": "denoising_diffusion_pytorch", "kdiffusion": "k_diffusion"}
