"""Train a DDPM: compose the config, build data, model and trainer, fit.

    python train.py                                  # 8x8 digits on the CPU, no network
    python train.py experiment=cifar10_ddpm trainer=ddp trainer.devices=8 logger=wandb
    python train.py ckpt_path=outputs/train/RUN/checkpoints/last.ckpt
"""

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import check_choice, report_config_errors
from ddpm.module import build_module


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the chosen logger and every non-null callback."""
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
    print(f"  checkpoints: {run_dir / 'checkpoints'} (last.ckpt resumes with ckpt_path=...)")
    print(f"  samples:     {run_dir / 'samples'}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_config_errors
def main(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True)
    # highest: fp32, high: TF32, medium: bf16
    torch.set_float32_matmul_precision(check_choice("float32_matmul_precision", cfg.float32_matmul_precision,
                                                    ("highest", "high", "medium")))
    run_dir = Path(cfg.paths.output_dir)
    save_config(cfg, run_dir)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    report(run_dir)


if __name__ == "__main__":
    main()
