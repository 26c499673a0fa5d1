"""Train a diffusion model: compose the config, then ``ddpm.runs.train.train(cfg)``.

    python train.py                                  # 8x8 digits on the CPU, no network
    python train.py experiment=cifar10_ddpm trainer=ddp trainer.devices=8 logger=wandb
    python train.py resume=outputs/train/RUN        # continue a run in place, from its newest checkpoint
"""

import sys

import hydra
from omegaconf import DictConfig

from ddpm.errors import report_config_errors
from ddpm.runs.resume import resume_argv
from ddpm.runs.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_config_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    sys.argv = resume_argv(sys.argv)  # resume=RUN_DIR: the run's own overrides, its directory, ckpt_path=auto
    main()
