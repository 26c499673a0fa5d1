"""Configs of runs written before the package was layered (``ddpm.module``, ``ddpm.unet``, ...): upgraded on load.

A run directory keeps the config it was trained with; its ``_target_`` paths and the keys that
moved are rewritten here, so checkpoints written before the change still load. State-dict names
did not change. The command-line overrides a run was started with (``resume=``) are upgraded here too.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

# old ``_target_`` -> new, for every constructor a config file named before the change
MOVED_TARGETS = {
    "ddpm.module.DiffusionModule": "ddpm.training.module.DiffusionModule",
    "ddpm.losses.SimpleLoss": "ddpm.diffusion.losses.SimpleLoss",
    "ddpm.unet.UNet": "ddpm.nets.unet.UNet",
    "ddpm.toy.MLPDenoiser": "ddpm.nets.mlp.MLPDenoiser",
    "ddpm.samplers.DDPMSampler": "ddpm.diffusion.samplers.DDPMSampler",
    "ddpm.samplers.DDIMSampler": "ddpm.diffusion.samplers.DDIMSampler",
    "ddpm.samplers.DPMSolverSampler": "ddpm.diffusion.samplers.DPMSolverSampler",
    **{f"ddpm.schedules.{n}": f"ddpm.diffusion.schedules.{n}" for n in
       ("linear", "cosine", "scaled_linear", "quadratic", "sigmoid")},
    "ddpm.data.ImageDataModule": "ddpm.data.datamodule.ImageDataModule",
    **{f"ddpm.data.{n}": f"ddpm.data.images.{n}" for n in
       ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic", "image_folder")},
    "ddpm.toy.PointDataModule": "ddpm.data.points.PointDataModule",
    **{f"ddpm.toy.{n}": f"ddpm.data.points.{n}" for n in ("spiral", "moons", "swiss_roll", "gaussians8")},
    "ddpm.callbacks.SampleGrid": "ddpm.training.callbacks.sample_grid.SampleGrid",
    "ddpm.callbacks.Throughput": "ddpm.training.callbacks.throughput.Throughput",
    "ddpm.fid.FIDCallback": "ddpm.training.callbacks.fid.FIDCallback",
    "ddpm.toy.ToyPlots": "ddpm.training.callbacks.toy_plots.ToyPlots",
    "ddpm.toy.CPUThreads": "ddpm.training.callbacks.cpu_threads.CPUThreads",
    # issue 23: checkpoint and logging plumbing each in one place
    "ddpm.training.checkpoint_io.AtomicCheckpointIO": "ddpm.training.checkpoints.AtomicCheckpointIO",
    "ddpm.training.wandb_run.wandb_logger": "ddpm.training.logs.wandb_run.wandb_logger",
    "ddpm.training.csv_logger.CSVLogger": "ddpm.training.logs.csv_logger.CSVLogger",
}


def _retarget(node) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        if target in MOVED_TARGETS:
            node["_target_"] = MOVED_TARGETS[target]
        for key in node:
            _retarget(node[key])
    elif OmegaConf.is_list(node):
        for item in node:
            _retarget(item)


def upgrade_run_config(cfg: DictConfig) -> DictConfig:
    """A copy of a run's train config in today's layout (unchanged if it already is)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        _retarget(cfg)
        data = cfg.get("data")
        if data is not None and data.get("_target_") == "ddpm.data.datamodule.ImageDataModule" and "name" not in data:
            builder = data.dataset._target_.rpartition(".")[2]  # the dataset's name keys its reference statistics
            data.name = None if builder == "image_folder" else builder
        if "denoiser" not in cfg and "loss" in cfg:  # prediction type from the loss, clipping and variance from the
            # sampler (an autoencoder run has neither)
            sampler = cfg.get("sampler") or {}
            cfg.denoiser = {
                "_target_": "ddpm.diffusion.denoiser.Denoiser", "_partial_": True,
                "prediction_type": cfg.loss.pop("prediction_type", "epsilon"),
                "clip_denoised": sampler.pop("clip_denoised", True),
                "variance": sampler.pop("variance", "fixed_small"),
            }
        upgrade_conditioning(cfg)
        upgrade_latent(cfg)
        upgrade_lr_schedule(cfg)
    return cfg


def upgrade_lr_schedule(cfg: DictConfig) -> None:
    """A run from before the ``lr_schedule`` group: ``module.warmup_steps`` and ``module.cosine_decay`` (a cosine
    to 0 at ``trainer.max_steps``) become the ``lr_schedule`` node."""
    module = cfg.get("module")
    if "lr_schedule" in cfg or not isinstance(module, DictConfig) or "warmup_steps" not in module:
        return
    decay = module.pop("cosine_decay", False)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    cfg.lr_schedule = {"_target_": "ddpm.training.lr_schedule.warmup_cosine_lr", "_partial_": True,
                       "warmup_steps": module.pop("warmup_steps"),
                       "decay_steps": max_steps if decay and max_steps is not None and max_steps > 0 else None}


LATENT_OPTIONS = ("autoencoder_ckpt", "scale_factor", "scale_images", "cache_latents", "max_cache_bytes")


def upgrade_latent(cfg: DictConfig) -> None:
    """A latent diffusion run from before the codec (``module=latent``, a ``LatentDiffusionModule`` subclass):
    its autoencoder options become the ``codec`` node of ``codec=autoencoder``, its module a ``DiffusionModule``."""
    module = cfg.get("module")
    if not isinstance(module, DictConfig) or module.get("_target_") != "ddpm.training.latent_module.LatentDiffusionModule":
        return
    module._target_ = "ddpm.training.module.DiffusionModule"
    cfg.codec = {"_target_": "ddpm.training.codec.LatentCodec",
                 **{key: module.pop(key) for key in LATENT_OPTIONS if key in module}}


CONDITIONING = "ddpm.training.conditioning."


def upgrade_conditioning(cfg: DictConfig) -> None:
    """A diffusion run from before the ``conditioning`` group: its kind, spread over ``model.num_classes``,
    ``model.context_dim``, ``module.p_uncond`` and ``text_encoder``, becomes one ``conditioning`` node."""
    module, model = cfg.get("module"), cfg.get("model")
    if "conditioning" in cfg or not isinstance(module, DictConfig) or not isinstance(model, DictConfig) \
            or "DiffusionModule" not in str(module.get("_target_")):
        return
    raw = OmegaConf.to_container(model, resolve=False)  # keeps ${data.num_classes} an interpolation
    p_uncond = module.pop("p_uncond", 0.1)
    encoder = cfg.pop("text_encoder", None)
    if encoder is not None or raw.get("context_dim") is not None:
        cfg.conditioning = {"_target_": CONDITIONING + "TextConditioning", "encoder": encoder, "p_uncond": p_uncond,
                            "context_dim": raw.get("context_dim"), "ema_decay": module.get("ema_decay", 0.9999),
                            "ema_warmup": module.get("ema_warmup", True)}
    elif raw.get("num_classes") is not None:
        cfg.conditioning = {"_target_": CONDITIONING + "ClassConditioning", "num_classes": raw["num_classes"],
                            "p_uncond": p_uncond}
    else:
        cfg.conditioning = {"_target_": CONDITIONING + "Unconditional"}


# train.py options that moved when the configs were split by task (issue 23): old override -> new
MOVED_OVERRIDES = {"model=autoencoder_kl_f4": "autoencoder=kl_f4", "model=autoencoder_kl_f8": "autoencoder=kl_f8",
                   "module=autoencoder": "task=autoencoder",
                   # the conditioning, codec and lr_schedule groups (issue 23)
                   "module=latent": "codec=autoencoder", "text_encoder=small": "conditioning=text_small",
                   "text_encoder=clip": "conditioning=text_clip", "model.num_classes=${data.num_classes}": "conditioning=class",
                   "module.cosine_decay=true": "lr_schedule=cosine", "module.cosine_decay=false": "lr_schedule=constant"}
# keys that moved: old prefix -> new (module.autoencoder_ckpt=X -> codec.autoencoder_ckpt=X)
MOVED_KEYS = {"module.p_uncond": "conditioning.p_uncond", "module.warmup_steps": "lr_schedule.warmup_steps",
              "text_encoder.": "conditioning.encoder.",
              **{f"module.{k}": f"codec.{k}" for k in ("autoencoder_ckpt", "scale_factor", "scale_images", "cache_latents",
                                                       "max_cache_bytes")}}
DIFFUSION_GROUPS = ("schedule", "denoiser", "loss", "sampler", "guidance", "text_encoder")


def moved_override(override: str) -> str:
    """One command-line override in today's config layout (unchanged when nothing about it moved)."""
    return moved_key(MOVED_OVERRIDES.get(override, override))


def moved_key(override: str) -> str:
    for old, new in MOVED_KEYS.items():
        if override.startswith(old) and (old.endswith(".") or override[len(old):len(old) + 1] == "="):
            return new + override[len(old):]
    return override


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """A run's saved command-line overrides in today's config layout: the autoencoder's nets and module
    moved (``MOVED_OVERRIDES``), so did the conditioning, latent and learning-rate options (``MOVED_KEYS``), and since a ``task=autoencoder`` run composes none of the diffusion
    groups, its ``schedule=null``-style overrides are dropped. Others are unchanged."""
    moved = [moved_override(o) for o in overrides]
    if "task=autoencoder" not in moved:
        return moved
    return [o for o in moved if not (o.partition("=")[0].lstrip("+~") in DIFFUSION_GROUPS and o.endswith("=null"))]
