"""Which checkpoint a run continues from: the newest complete one of its directory, or a named one
(a damaged file: the newest complete one beside it); and the run directory a checkpoint belongs to."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from ddpm.errors import ConfigError
from ddpm.training.checkpoints.atomic import is_complete, remove_orphans


def run_of_checkpoint(ckpt_path: str | os.PathLike, name: str = "ckpt_path=", hint: str = "") -> tuple[Path, Path]:
    """(the checkpoint, its run directory) of ``<run>/checkpoints/X.ckpt``, or a ConfigError of one line
    (``name`` the path, ending in ``hint``) when it is not a file in a run directory holding ``config.yaml``."""
    ckpt = Path(ckpt_path).expanduser()
    run_dir = ckpt.parent.parent
    if not ckpt.is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{name}'{ckpt}' is not a checkpoint in <run>/checkpoints/ with <run>/config.yaml{hint}")
    return ckpt, run_dir


def newest_complete(path: str | os.PathLike) -> Path | None:
    """``path`` if complete, else the most recently written complete ``*.ckpt`` beside it (None if none)."""
    path = Path(path)
    if is_complete(path):
        return path
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in others if is_complete(p)), None)


def resolve_resume(ckpt_path: str | None) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``, or when it is damaged (a save cut short by a kill
    or a full disk) the newest complete checkpoint beside it, with one line saying so. Also removes
    the temp files a killed run left beside it. A missing file is returned as is, for the caller."""
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return ckpt_path
    path = Path(ckpt_path)
    if rank_zero_only.rank == 0:  # one process cleans up; rank 0 is the one that writes checkpoints
        remove_orphans(path.parent)
    found = newest_complete(path)
    if found is None:
        raise ConfigError(f"ckpt_path={ckpt_path} is damaged (not a complete checkpoint) and no complete "
                          f"*.ckpt is beside it to fall back to")
    if found != path and rank_zero_only.rank == 0:
        print(f"warning: ckpt_path={ckpt_path} is damaged (not a complete checkpoint); resuming from {found}, "
              f"the newest complete checkpoint beside it", file=sys.stderr, flush=True)
    return str(found)


def saved_step(path: str | os.PathLike) -> int:
    """The ``global_step`` a complete checkpoint was saved at (its tensors are memory-mapped, not read)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint.get("global_step", -1)) if isinstance(checkpoint, dict) else -1


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a run directory holds: Lightning's ``hpc_ckpt_N.ckpt`` (written when SLURM's
    requeue signal came) in the run directory and ``checkpoints/*.ckpt`` (``last.ckpt``, the periodic
    ones, the stop save)."""
    run_dir = Path(run_dir)
    return sorted([*run_dir.glob("hpc_ckpt_*.ckpt"), *(run_dir / "checkpoints").glob("*.ckpt")])


def find_resume(run_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """The newest complete checkpoint of ``run_dir`` and its step: the highest ``global_step``, the
    most recently written among equals; None when the run has none (a first start). Damaged files (a
    save cut short) are passed over, and the temp files a killed save left are removed.

    Every candidate's step is read from its pickle alone (memory-mapped: a long run may hold
    thousands of periodic checkpoints); only the chosen one is read whole for its CRC check, and
    the next one when it fails.
    """
    if rank_zero_only.rank == 0:
        for directory in (Path(run_dir), Path(run_dir) / "checkpoints"):
            remove_orphans(directory)
    ranked = []
    for path in run_checkpoints(run_dir):
        try:
            ranked.append(((saved_step(path), path.stat().st_mtime), path))
        except Exception:  # cut short before its index, or not tensors and plain containers: not resumed from
            continue
    for (step, _), path in sorted(ranked, reverse=True):
        if is_complete(path):
            return path, step
    return None


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


