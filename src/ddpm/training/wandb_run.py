"""One W&B run per run directory: a resumed or requeued training continues the W&B run it started.

Lightning's ``WandbLogger`` starts a new W&B run (new id, step 0) unless it is given the old run's id
(the failure Lightning #13524 reports). Here the id lives in ``<run dir>/wandb_id``: the first start
writes it, every later start in the same directory reads it back and passes it with
``resume="allow"``, so W&B appends to that run; offline runs (``wandb/offline-run-*``, one per start)
are merged under that id by ``wandb sync``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm.errors import ConfigError

ID_FILE = "wandb_id"
# W&B refuses these in a project name (and names longer than 128 characters)
_BAD_PROJECT_CHARS = re.compile(r"[/\\#?%:,]")


def check_project(project: str | None) -> str | None:
    """``project`` unchanged if W&B accepts it as a project name, else a ConfigError naming it."""
    if project is None:
        return None
    if not isinstance(project, str) or not project or len(project) > 128 or _BAD_PROJECT_CHARS.search(project):
        raise ConfigError(
            f"logger.project={project!r} is not a W&B project name: use 1 to 128 characters without / \\ # ? % : ,"
        )
    return project


def run_id(run_dir: str | os.PathLike, chosen: str | None = None) -> str:
    """The W&B run id of ``run_dir``: ``chosen`` if given, else the one stored in ``<run_dir>/wandb_id``, else a
    fresh random one; rank zero stores the answer there. Other ranks never start a W&B run; they get the
    same answer once the file exists and a throw-away id before."""
    path = Path(run_dir) / ID_FILE
    if chosen is None and path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    run = chosen or secrets.token_hex(4)  # 8 characters of [0-9a-f], a valid W&B id
    _store(path, run)
    return run


@rank_zero_only
def _store(path: Path, run: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(run + "\n")
    os.replace(tmp, path)  # a reader sees no id or the whole id


def wandb_logger(save_dir: str, project: str | None = "ddpm", offline: bool = True, id: str | None = None,
                 **kwargs: Any) -> WandbLogger:
    """Lightning's ``WandbLogger`` writing under ``save_dir`` (the run directory), with the run's stored id and
    ``resume="allow"``; ``offline`` unless told otherwise (``WANDB_MODE`` still wins). ``id`` (``logger.id=``):
    continue that W&B run instead, and store its id. Other keywords go to ``WandbLogger`` / ``wandb.init``."""
    check_project(project)
    return WandbLogger(save_dir=save_dir, project=project, offline=offline, id=run_id(save_dir, id),
                       resume="allow", **kwargs)
