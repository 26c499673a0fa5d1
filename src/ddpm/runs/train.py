"""Training as a function of the composed config: ``train.py`` calls it; tests can call it in-process."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import check_choice
from ddpm.runs.build import build_module
from ddpm.runs.validate import validate_train_config
from ddpm.training.checkpoints import check_fits, checkpoint_to_resume
from ddpm.training.logs.console import info_to_stdout, quiet_lightning
from ddpm.training.logs.wandb_run import adopt_checkpoint_id


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the chosen logger and every non-null callback (``train`` silences Lightning's noise first)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


@rank_zero_only
def save_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)


@rank_zero_only
def report(run_dir: Path) -> None:
    print(f"\nrun directory: {run_dir}")
    print(f"  config:      {run_dir / 'config.yaml'}")
    print(f"  checkpoints: {run_dir / 'checkpoints'} (continue the run with resume={run_dir})")
    print(f"  samples:     {run_dir / 'samples'}")


def train(cfg: DictConfig) -> L.Trainer:
    """Check the config, seed, build data, module and trainer from ``cfg``, fit (resuming from
    ``cfg.ckpt_path``; ``auto``: the run directory's newest checkpoint), report."""
    validate_train_config(cfg)  # bad values are one line, before anything is seeded, built or written
    info_to_stdout()
    quiet_lightning(cfg.trainer.get("num_nodes", 1))
    ckpt_path = checkpoint_to_resume(cfg.ckpt_path, Path(cfg.paths.output_dir))
    if ckpt_path is not None:  # a run resumed in place writes into its own checkpoints/, as it should
        warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty", UserWarning)
    L.seed_everything(cfg.seed, workers=True)
    # highest: fp32, high: TF32, medium: bf16
    torch.set_float32_matmul_precision(
        check_choice("float32_matmul_precision", cfg.float32_matmul_precision, ("highest", "high", "medium"))
    )
    run_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    if ckpt_path is not None and Path(ckpt_path).is_file():
        check_fits(module, ckpt_path, same_schedule=True)  # another model or schedule: one line naming it
    save_config(cfg, run_dir)
    adopt_checkpoint_id(run_dir, ckpt_path, cfg.get("logger"))  # a checkpoint's W&B run continues in a dir without wandb_id
    trainer = build_trainer(cfg)
    # weights_only: a resumed checkpoint is read as tensors and plain containers, never unpickled code
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    report(run_dir)
    return trainer
