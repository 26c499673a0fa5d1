"""The private Lightning attributes the package uses are where ddpm/training/lightning_private.py says,
in the installed Lightning; after an upgrade that moves one, these tests name it and the version."""

import lightning as L
import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from ddpm.training import lightning_private
from ddpm.training.lightning_private import PRIVATE, LightningMoved, private


@pytest.fixture
def trainer(tmp_path):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


@pytest.mark.parametrize("path", sorted(PRIVATE))
def test_every_private_attribute_used_is_there_in_the_installed_lightning(trainer, path):
    value = trainer
    for name in path.split("."):
        assert hasattr(value, name), (
            f"Lightning {L.__version__} has no trainer.{path} ({PRIVATE[path]}): ddpm/training/lightning_private.py "
            f"uses it; find where this version keeps it and update that module")
        value = getattr(value, name)


def test_a_moved_attribute_is_one_error_naming_it_and_the_lightning_version(trainer, monkeypatch):
    monkeypatch.delattr(type(trainer._checkpoint_connector), "hpc_save_path")  # as if an upgrade renamed it
    with pytest.raises(LightningMoved, match=rf"^trainer\._checkpoint_connector\.hpc_save_path \(.*\) is gone in "
                                             rf"Lightning {L.__version__}: update ddpm/training/lightning_private\.py"):
        lightning_private.hpc_save_path(trainer)


def test_stopping_after_the_step_sets_what_the_public_received_sigterm_reads(trainer, monkeypatch):
    assert not trainer.received_sigterm
    lightning_private.stop_after_this_step(trainer)
    assert trainer.received_sigterm
    # renamed in an upgrade: an error, not a new attribute that the fit loop never reads
    monkeypatch.delattr(trainer._signal_connector, "received_sigterm")
    with pytest.raises(LightningMoved, match="received_sigterm"):
        lightning_private.stop_after_this_step(trainer)
    assert not hasattr(trainer._signal_connector, "received_sigterm")


def test_the_cluster_environment_and_the_hpc_checkpoint_path(trainer, tmp_path, monkeypatch):
    assert isinstance(lightning_private.cluster_environment(trainer), LightningEnvironment)
    assert lightning_private.hpc_save_path(trainer) == tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").touch()
    assert lightning_private.hpc_save_path(trainer) == tmp_path / "hpc_ckpt_2.ckpt"  # the next number
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a SLURM batch task, as Lightning detects one
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    in_slurm = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert isinstance(lightning_private.cluster_environment(in_slurm), SLURMEnvironment)


def test_private_only_reaches_the_attributes_it_lists(trainer):
    with pytest.raises(KeyError):
        private(trainer, "_accelerator_connector._precision_flag")
