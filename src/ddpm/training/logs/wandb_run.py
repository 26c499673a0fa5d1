"""One W&B run per run directory: a resumed or requeued training continues the W&B run it started.

Lightning's ``WandbLogger`` starts a new W&B run (new id, step 0) unless it is given the old run's id
(the failure Lightning #13524 reports). Here the id lives in ``<run dir>/wandb_id``: the first start
writes it, every later start in the same directory reads it back and passes it with
``resume="allow"``, so W&B appends to that run; offline runs (``wandb/offline-run-*``, one per start)
are merged under that id by ``wandb sync``. Every checkpoint holds the id too (``checkpoint["wandb_id"]``,
written by ``ddpm.training.callbacks.wandb_id``), so a run resumed from a checkpoint into a directory
without ``wandb_id`` continues the checkpoint's W&B run (:func:`adopt_checkpoint_id`).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm.errors import ConfigError

ID_FILE = "wandb_id"
CHECKPOINT_KEY = "wandb_id"  # checkpoint["wandb_id"]: the W&B run the checkpoint's training logged to
# W&B refuses these in a project name (and names longer than 128 characters)
_BAD_PROJECT_CHARS = re.compile(r"[/\\#?%:,]")
PROJECT_ALLOWED = "a W&B project name: 1 to 128 characters without / \\ # ? % : ,"
LOG_MODEL = (False, True, "all")


def is_project(project: object) -> bool:
    """Whether W&B accepts ``project`` as a project name."""
    return isinstance(project, str) and 0 < len(project) <= 128 and not _BAD_PROJECT_CHARS.search(project)


def check_project(project: str | None) -> str | None:
    """``project`` unchanged if W&B accepts it as a project name, else a ConfigError naming it."""
    if project is None:
        return None
    if not is_project(project):
        raise ConfigError(
            f"logger.project={project!r} is not a W&B project name: use 1 to 128 characters without / \\ # ? % : ,"
        )
    return project


def run_id(run_dir: str | os.PathLike, chosen: str | None = None) -> str:
    """The W&B run id of ``run_dir``: ``chosen`` if given, else the one stored in ``<run_dir>/wandb_id``, else a
    fresh random one; rank zero stores the answer there. Other ranks never start a W&B run; they get the
    same answer once the file exists and a throw-away id before."""
    path = Path(run_dir) / ID_FILE
    stored = _stored(run_dir)
    if chosen is None and stored:
        return stored
    run = chosen or secrets.token_hex(4)  # 8 characters of [0-9a-f], a valid W&B id
    _store(path, run)
    return run


def _stored(run_dir: str | os.PathLike) -> str | None:
    path = Path(run_dir) / ID_FILE
    return (path.read_text().strip() or None) if path.is_file() else None


@rank_zero_only
def _store(path: Path, run: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(run + "\n")
    os.replace(tmp, path)  # a reader sees no id or the whole id


def checkpoint_id(ckpt_path: str | os.PathLike) -> str | None:
    """``checkpoint["wandb_id"]`` of a local checkpoint file, None when it has none or cannot be read
    (memory-mapped and weights-only: the tensors are not read)."""
    import torch

    try:
        found = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(CHECKPOINT_KEY)
    except Exception:  # a damaged or non-zip checkpoint: the resume itself says what is wrong with it
        return None
    return found if isinstance(found, str) and found else None


def adopt_checkpoint_id(run_dir: str | os.PathLike, ckpt_path: str | os.PathLike | None,
                        logger: Any = None) -> str | None:
    """Before the logger is built: which W&B run a start resumed from ``ckpt_path`` continues.

    The run directory's stored id when it has one (its own W&B run, e.g. a requeued job), else the
    checkpoint's (``ckpt_path=<other run>/checkpoints/last.ckpt`` into a new directory continues the W&B
    run that checkpoint was logged to): stored in ``<run_dir>/wandb_id`` and said in one printed line.
    Nothing when ``logger`` (the ``logger`` config node) is not this module's W&B logger or names its
    own ``id``, or when there is no local checkpoint. Returns the id the run will use, or None.
    """
    if logger is None or logger.get("_target_") != f"{__name__}.wandb_logger" or logger.get("id"):
        return None
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return None
    stored, found = _stored(run_dir), checkpoint_id(ckpt_path)
    if found is None or stored == found:
        return stored
    if stored:
        _say(f"W&B: continuing this run directory's W&B run {stored} (the checkpoint {ckpt_path} was logged to {found})")
        return stored
    _store(Path(run_dir) / ID_FILE, found)
    _say(f"W&B: continuing W&B run {found} of the checkpoint {ckpt_path} (a new W&B run instead: logger.id=NEW_ID)")
    return found


@rank_zero_only
def _say(line: str) -> None:
    print(line, flush=True)


def check_log_model(log_model: object) -> bool | str:
    """``logger.log_model`` if it is false, true or all, else a ConfigError naming it."""
    if log_model not in LOG_MODEL or type(log_model) not in (bool, str):
        raise ConfigError(f"logger.log_model={log_model!r} is not allowed: use false, true (the last and best "
                          "checkpoints when training ends) or all (every checkpoint as it is written)")
    return log_model


# What a call into W&B raises once its service process (wandb-core) is gone
SERVICE_LOST = (ConnectionError, EOFError)


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that W&B cannot stop, and whose ``log_model=True`` means the last and
    best checkpoints, once, when training ends.

    A preempted SLURM job's SIGTERM reaches every process of the job, W&B's service (wandb-core)
    included, which exits at once, while training finishes its step to save a checkpoint; the next
    ``wandb.log`` would then raise ``ConnectionResetError`` in the middle of that step and lose the save.
    Here such a call ends W&B logging for this start with one warning line, and training goes on.
    (Lightning's ``log_model=True`` logs every checkpoint as it is written when ``save_top_k=-1``, as in
    ``conf/callbacks/checkpoint.yaml``; ``log_model="all"`` still does that.)"""

    _lost: str | None = None  # why W&B logging stopped, once it has

    def _guarded(self, call, *args, **kwargs):
        if self._lost is not None:
            return None
        try:
            return call(*args, **kwargs)
        except SERVICE_LOST as error:
            self._lost = f"{type(error).__name__}: {error}"
            print(f"warning: W&B stopped answering ({self._lost}; a SIGTERM reaches its service too): W&B "
                  "logging stops for this start, training goes on", file=sys.stderr, flush=True)
            return None

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._guarded(super().log_metrics, metrics, step)

    @rank_zero_only
    def log_image(self, key, images, step=None, **kwargs) -> None:
        self._guarded(super().log_image, key, images, step, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        self._guarded(super().log_hyperparams, params)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._guarded(super().finalize, status)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self._log_model is True:  # remembered; Lightning's finalize logs its last and best paths
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback
        else:
            self._guarded(super().after_save_checkpoint, checkpoint_callback)


def wandb_logger(save_dir: str, project: str | None = "ddpm", offline: bool = True, id: str | None = None,
                 log_model: bool | str = False, **kwargs: Any) -> WandbLogger:
    """Lightning's ``WandbLogger`` writing under ``save_dir`` (the run directory), with the run's stored id and
    ``resume="allow"``. ``offline`` (the default) or online, unless ``WANDB_MODE`` is set: that wins
    (``offline``, ``online``, ``disabled``). ``id`` (``logger.id=``): continue that W&B run instead, and store
    its id. ``log_model``: false, true (the last and best checkpoints when training ends) or ``"all"``
    (every checkpoint as it is written), as W&B artifacts, online or offline (uploaded by ``wandb sync``).
    Other keywords go to ``WandbLogger`` / ``wandb.init``."""
    check_project(project)
    check_log_model(log_model)
    if not os.environ.get("WANDB_MODE"):
        # wandb.init(mode=...), not Lightning's offline=True: that one refuses log_model (W&B keeps offline
        # artifacts for `wandb sync`) and overwrites WANDB_MODE in os.environ for the rest of the process
        kwargs.setdefault("mode", "offline" if offline else "online")
    logger = RunWandbLogger(save_dir=save_dir, project=project, offline=False, id=run_id(save_dir, id),
                            resume="allow", log_model=log_model, **kwargs)
    if logger._wandb_init.get("anonymous") is None:  # Lightning always passes it; W&B warns that it does nothing
        logger._wandb_init.pop("anonymous", None)
    return logger
