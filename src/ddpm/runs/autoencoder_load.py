"""A trained autoencoder, loaded back frozen from its run's checkpoint: what a latent diffusion model encodes with."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate

from ddpm.errors import ConfigError, root_config_error
from ddpm.nets.autoencoder import KLAutoencoder, weights_digest
from ddpm.runs.build_autoencoder import is_autoencoder_config
from ddpm.runs.load import read_run_config
from ddpm.training.checkpoint_load import check_fits, read_checkpoint

PREFIX = "autoencoder."  # the AutoencoderModule's attribute: its weights' names in a checkpoint


def load_autoencoder(ckpt_path: str | os.PathLike) -> tuple[KLAutoencoder, dict]:
    """The frozen (``requires_grad`` False), eval-mode autoencoder of ``<run>/checkpoints/X.ckpt`` and
    ``info``: {"path": the resolved checkpoint path, "digest": ``weights_digest`` of its weights,
    "image_size", "channels", "latent_shape" (z, h, w)}.

    The checkpoint is read with ``weights_only=True`` and the run's config through
    ``read_run_config`` (every ``_target_`` allow-listed before anything is built). A path that is not
    such a checkpoint, or a checkpoint of a diffusion model rather than an autoencoder, is a one-line
    ConfigError.
    """
    ckpt = Path(ckpt_path).expanduser()
    run_dir = ckpt.parent.parent
    if not ckpt.is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"autoencoder checkpoint '{ckpt}' is not a checkpoint in <run>/checkpoints/ with "
                          "<run>/config.yaml: give one of an autoencoder run (python train.py experiment=autoencoder_mnist)")
    cfg = read_run_config(run_dir / "config.yaml")
    if not is_autoencoder_config(cfg):
        target = cfg.get("module", {}).get("_target_", "an unknown module")
        raise ConfigError(f"'{ckpt}' is a checkpoint of {target}, not of an autoencoder: give the checkpoint of an "
                          "autoencoder run (python train.py experiment=autoencoder_mnist)")
    try:
        autoencoder = instantiate(cfg.model)
    except Exception as e:  # Hydra wraps what the constructor raised
        raise root_config_error(e) or e
    state = {k[len(PREFIX):]: v for k, v in read_checkpoint(ckpt)["state_dict"].items() if k.startswith(PREFIX)}
    check_fits(autoencoder, ckpt, state)
    autoencoder.load_state_dict(state)
    autoencoder.eval().requires_grad_(False)
    info = {"path": str(ckpt.resolve()), "digest": weights_digest(autoencoder), "image_size": autoencoder.image_size,
            "channels": autoencoder.in_channels, "latent_shape": tuple(autoencoder.latent_shape)}
    return autoencoder, info
