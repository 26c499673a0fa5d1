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
    return cfg


# train.py options that moved when the configs were split by task (issue 23): old override -> new
MOVED_OVERRIDES = {"model=autoencoder_kl_f4": "autoencoder=kl_f4", "model=autoencoder_kl_f8": "autoencoder=kl_f8",
                   "module=autoencoder": "task=autoencoder"}
DIFFUSION_GROUPS = ("schedule", "denoiser", "loss", "sampler", "guidance", "text_encoder")


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """A run's saved command-line overrides in today's config layout: the autoencoder's nets and module
    moved (``MOVED_OVERRIDES``), and since a ``task=autoencoder`` run composes none of the diffusion
    groups, its ``schedule=null``-style overrides are dropped. Others are unchanged."""
    moved = [MOVED_OVERRIDES.get(o, o) for o in overrides]
    if "task=autoencoder" not in moved:
        return moved
    return [o for o in moved if not (o.partition("=")[0].lstrip("+~") in DIFFUSION_GROUPS and o.endswith("=null"))]
