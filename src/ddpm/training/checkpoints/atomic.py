"""Checkpoints written atomically in their own directory, and whole files told from cut-short ones.

Lightning's ``_atomic_save`` writes through an fsspec transaction whose temp file lives in ``$TMPDIR``
and is moved with ``shutil.move``: a copy, not a rename, when ``$TMPDIR`` is another filesystem
(local /tmp, outputs on NFS), so a kill during the copy leaves a truncated checkpoint. Here the temp
file sits beside the target: write, flush, fsync, ``os.replace`` (one rename on one filesystem),
fsync the directory. A reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ddpm.training.checkpoints.reading import read_checkpoint

TEMP_SUFFIX = ".partial"  # temp files are ".<name>.<random>.partial" beside <name>


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or all of the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; keep what a plain open() would give
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):  # some filesystems refuse to open or fsync a directory; the rename is done
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed save left in ``directory``; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    orphans = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in orphans:
        with suppress(FileNotFoundError):
            p.unlink()
    return orphans


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole torch checkpoint: a zip whose every member passes its CRC check.

    Reads the file once without unpickling anything, so it is safe on untrusted files.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def is_local(path) -> bool:
    """Whether ``path`` is on the local filesystem (no ``s3://``-style protocol)."""
    return get_protocol(str(path)) == "file"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic local saves; the first save into a directory
    removes the temp files a killed run left there. Local loads are weights-only
    (``read_checkpoint``: a file holding anything but tensors and plain containers is one line)."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's way
        directory = Path(path).parent
        if directory not in self._cleaned:
            remove_orphans(directory)
            self._cleaned.add(directory)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path, map_location if map_location is not None else "cpu")
