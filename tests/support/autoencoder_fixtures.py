"""A tiny autoencoder run for tests: what ``python train.py experiment=autoencoder_mnist`` leaves, on the 8x8
digits, in a second and without training (``write_autoencoder_run``), or trained a few steps (``AE_TINY``
with ``compose_train`` and ``ddpm.runs.train.train``); a random autoencoder of any data (``save_autoencoder``)."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

from support.runs import compose_train

# experiment=autoencoder_mnist shrunk to the 8x8 digits: f=2 (8 -> a 4x4x4 latent, 8x8 is already a multiple), 6k params
AE_TINY = [
    "experiment=autoencoder_mnist", "data=digits", "data.batch_size=16", "data.dataset.test_images=297",
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4", "model.attention=false",
    "lr_schedule.warmup_steps=2", "trainer.accelerator=cpu", "trainer.log_every_n_steps=2",
    "callbacks.reconstructions.num_images=32", "callbacks.reconstructions.num_shown=8",
    "callbacks.progress_bar.refresh_rate=0",
]


def write_autoencoder_run(run_dir: Path, *overrides: str) -> Path:
    """``run_dir/config.yaml`` and ``run_dir/checkpoints/last.ckpt`` of an untrained tiny autoencoder (the
    layout and state-dict names of a trained run: ``autoencoder.*``); returns the checkpoint's path.
    ``overrides`` change ``AE_TINY``, e.g. ``model.z_channels=2``."""
    from ddpm.runs.build import build_module

    run_dir = Path(run_dir)
    cfg = compose_train(*AE_TINY, *overrides, tmp_path=run_dir)
    torch.manual_seed(0)
    module = build_module(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, ckpt)
    return ckpt


def save_autoencoder(run_dir, seed: int, *overrides: str) -> str:
    """A randomly initialised autoencoder of ``experiment=autoencoder_mnist overrides...``, saved as an
    autoencoder run leaves it (<run>/config.yaml, <run>/checkpoints/last.ckpt with the weights under
    "autoencoder."); returns the checkpoint's path."""
    from hydra.utils import instantiate

    cfg = compose_train("experiment=autoencoder_mnist", *overrides, tmp_path=run_dir)
    torch.manual_seed(seed)
    ae = instantiate(cfg.model)
    (run_dir / "checkpoints").mkdir(parents=True)
    cfg.callbacks = {}  # what load_autoencoder reads: the model and module nodes
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.save({"state_dict": {f"autoencoder.{k}": v for k, v in ae.state_dict().items()}},
               run_dir / "checkpoints" / "last.ckpt")
    return str(run_dir / "checkpoints" / "last.ckpt")
