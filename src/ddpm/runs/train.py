"""Training as a function of the composed config: ``train.py`` calls it; tests can call it in-process."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import check_choice
from ddpm.runs.build import build_module
from ddpm.runs.validate import validate_train_config
from ddpm.training.checkpoint_io import find_resume, resolve_resume
from ddpm.training.checkpoint_load import check_fits
from ddpm.training.wandb_run import adopt_checkpoint_id


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def _warning_or_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record comes (tests swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def info_to_stdout() -> None:
    """Lightning's info lines ("Seed set to 0", "GPU available: ...") go to stdout, its warnings and
    errors stay on stderr, so the stderr of a run stopped by bad input is the one error line."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for console in logger.handlers:
            if type(console) is not logging.StreamHandler or _warning_or_above in console.filters:
                continue  # a file, or split already
            console.addFilter(_warning_or_above)
            out = _Stdout()
            out.setFormatter(console.formatter)
            out.setLevel(console.level)
            out.addFilter(_below_warning)
            logger.addHandler(out)


def quiet_lightning(num_nodes: int = 1) -> None:
    """Silence what Lightning prints on every run that a user of this project cannot act on.

    Each filter matches one message at its source; every other warning still shows.
    """
    # Lightning's advertisements for its cloud logger and model registry (logged, not warned).
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_not_a_tip)
    # torch deprecated LeafSpec; Lightning's _pytree.py still builds one when it wraps the dataloaders.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            r"lightning\.pytorch\.utilities\._pytree")
    # The module logs every log_every_n_steps optimizer steps across epochs, so an epoch shorter
    # than that interval (the digits: 14 batches) loses nothing.
    warnings.filterwarnings("ignore", r"The number of training batches \(\d+\) is smaller than the logging interval",
                            PossibleUserWarning)
    if num_nodes == 1:  # srun is needed to start processes on several nodes; on one, Lightning starts them
        warnings.filterwarnings("ignore", r"The `srun` command is available on your system but is not used",
                                PossibleUserWarning)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer with the chosen logger and every non-null callback, without Lightning's noise."""
    quiet_lightning(cfg.trainer.get("num_nodes", 1))
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


def on_slurm() -> bool:
    """Whether this process is a task of a SLURM batch job (what Lightning's SLURMEnvironment detects)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


def checkpoint_to_resume(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What ``trainer.fit`` resumes from.

    - ``auto``, and null in a SLURM job (a requeued job restarts in its own run directory): the run
      directory's newest complete checkpoint (``find_resume``: Lightning's ``hpc_ckpt_N.ckpt`` or
      ``checkpoints/*.ckpt``, the highest step), or None, a fresh start, when it has none yet.
      Lightning's own choice on SLURM (``ckpt_path="hpc"``) would pass over a newer ``last.ckpt``
      and raise on a first start (Lightning #20347); the path found is given to it instead.
    - a path: that checkpoint, or when it is damaged the newest complete one beside it.
    """
    if ckpt_path == "auto" or (ckpt_path is None and on_slurm()):
        found = find_resume(run_dir)
        if found is None:
            if ckpt_path == "auto":
                _say(f"ckpt_path=auto: no checkpoint in {run_dir} yet, starting at step 0")
            return None
        path, step = found
        _say(f"resuming {run_dir} from {path} (step {step}), its newest complete checkpoint")
        return str(path)
    return resolve_resume(ckpt_path)  # a damaged checkpoint: the newest complete one beside it


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
