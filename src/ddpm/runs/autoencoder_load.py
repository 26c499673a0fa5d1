"""A trained autoencoder, loaded back frozen from its run's checkpoint: what a latent diffusion model encodes with."""

from __future__ import annotations

import os

from hydra.utils import instantiate

from ddpm.errors import ConfigError, unwrapped_config_errors
from ddpm.nets.autoencoder import KLAutoencoder, weights_digest
from ddpm.runs.run_config import module_kind, read_run_config
from ddpm.training.checkpoints import check_fits, read_checkpoint, run_of_checkpoint

PREFIX = "autoencoder."  # the AutoencoderModule's attribute: its weights' names in a checkpoint
AN_AUTOENCODER_RUN = "give the checkpoint of an autoencoder run (python train.py experiment=autoencoder_mnist)"


def load_autoencoder(ckpt_path: str | os.PathLike) -> tuple[KLAutoencoder, dict]:
    """The frozen (``requires_grad`` False), eval-mode autoencoder of ``<run>/checkpoints/X.ckpt`` and
    ``info``: {"path": the resolved checkpoint path, "digest": ``weights_digest`` of its weights,
    "image_size", "channels", "latent_shape" (z, h, w)}.

    The checkpoint is read with ``weights_only=True`` and the run's config through
    ``read_run_config`` (every ``_target_`` allow-listed before anything is built). A path that is not
    such a checkpoint, or a checkpoint of a diffusion model rather than an autoencoder, is a one-line
    ConfigError.
    """
    ckpt, run_dir = run_of_checkpoint(ckpt_path, "autoencoder checkpoint ", f": {AN_AUTOENCODER_RUN}")
    cfg = read_run_config(run_dir / "config.yaml")
    if module_kind(cfg) != "autoencoder":
        raise ConfigError(f"'{ckpt}' is a checkpoint of {cfg.module._target_}, not of an autoencoder: {AN_AUTOENCODER_RUN}")
    with unwrapped_config_errors():
        autoencoder = instantiate(cfg.model)
    state = {k[len(PREFIX):]: v for k, v in read_checkpoint(ckpt)["state_dict"].items() if k.startswith(PREFIX)}
    check_fits(autoencoder, ckpt, state)
    autoencoder.load_state_dict(state)
    autoencoder.eval().requires_grad_(False)
    info = {"path": str(ckpt.resolve()), "digest": weights_digest(autoencoder), "image_size": autoencoder.image_size,
            "channels": autoencoder.in_channels, "latent_shape": tuple(autoencoder.latent_shape)}
    return autoencoder, info
