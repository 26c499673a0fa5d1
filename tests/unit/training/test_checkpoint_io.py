"""Checkpoints are atomic wherever they are written (ddpm.training.checkpoints): a failed save leaves the
previous file whole, a restart removes the temp files, and a damaged newest checkpoint falls back to the
previous one (real runs killed while saving: e2e/test_atomic_checkpoints.py)."""

import os

import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.training.checkpoints import atomic as checkpoint_io
from ddpm.training.checkpoints import AtomicCheckpointIO, is_complete, newest_complete, remove_orphans, resolve_resume


def test_failed_replace_leaves_the_previous_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_first_save_into_a_directory_removes_orphans_of_a_killed_run(tmp_path):
    orphan = tmp_path / ".last.ckpt.abc123.partial"
    orphan.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.partial"  # not one of ours: no leading dot
    keep.write_text("x")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "step_0000003.ckpt")
    assert not orphan.exists() and keep.exists()
    assert remove_orphans(tmp_path / "missing") == []


def test_saved_file_has_the_mode_a_plain_open_gives(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 0}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_truncated_newest_falls_back_to_the_newest_complete_one(tmp_path):
    io = AtomicCheckpointIO()
    for step in (2, 4):
        io.save_checkpoint({"global_step": step}, tmp_path / f"step_{step:07d}.ckpt")
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4}, last)
    assert newest_complete(last) == last
    last.write_bytes(last.read_bytes()[:-100])
    assert not is_complete(last)
    assert newest_complete(last) == tmp_path / "step_0000004.ckpt"
    for p in tmp_path.glob("step_*"):
        p.write_bytes(b"")
    assert newest_complete(last) is None


def test_resume_from_a_damaged_only_checkpoint_is_one_config_error(tmp_path):
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / ".last.ckpt.x1.partial").write_bytes(b"")
    with pytest.raises(ConfigError, match="last.ckpt is damaged"):
        resolve_resume(str(last))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the orphan went
    assert resolve_resume(None) is None
