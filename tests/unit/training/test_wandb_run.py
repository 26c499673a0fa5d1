"""W&B runs that continue: the run id kept in the run directory and in every checkpoint, offline by
default, and the real offline run files (config, scalars, LR, images/s, FD, images, a checkpoint artifact)."""

import struct
from pathlib import Path

import pytest
from support.runs import TINY, compose_train

from ddpm.errors import ConfigError

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = tmp_path_factory.getbasetemp() / "wandb_home"  # artifact staging and W&B's logs: not under ~
    monkeypatch.setenv("WANDB_DATA_DIR", str(data / "data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(data / "cache"))


def test_the_run_id_is_stored_in_the_run_dir_and_reused(tmp_path):
    from hydra.utils import instantiate

    from ddpm.training.logs.wandb_run import ID_FILE, wandb_logger

    first = instantiate(compose_train("logger=wandb", tmp_path=tmp_path).logger)  # conf/logger/wandb.yaml
    again = instantiate(compose_train("logger=wandb", tmp_path=tmp_path).logger)
    stored = (tmp_path / ID_FILE).read_text().strip()
    assert first.version == again.version == stored and len(stored) == 8
    assert first._wandb_init["resume"] == "allow" and "anonymous" not in first._wandb_init  # W&B warns on it
    other = wandb_logger(save_dir=str(tmp_path / "other"))
    assert other.version != stored  # another run directory, another W&B run
    chosen = wandb_logger(save_dir=str(tmp_path), id="myrun01")  # logger.id=: that run, from now on
    assert chosen.version == (tmp_path / ID_FILE).read_text().strip() == "myrun01"
    assert wandb_logger(save_dir=str(tmp_path)).version == "myrun01"


def test_offline_by_default_online_with_one_switch_and_wandb_mode_wins(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from ddpm.training.logs.wandb_run import wandb_logger

    monkeypatch.delenv("WANDB_MODE")
    mode = {offline: wandb_logger(save_dir=str(tmp_path), offline=offline)._wandb_init.get("mode")
            for offline in (True, False)}
    assert mode == {True: "offline", False: "online"}  # logger.offline=false: online
    monkeypatch.setenv("WANDB_MODE", "disabled")  # set: W&B reads it, nothing here overrides it
    assert "mode" not in wandb_logger(save_dir=str(tmp_path), offline=True)._wandb_init
    # checkpoints as artifacts offline too (Lightning's offline=True refuses log_model; `wandb sync` uploads them)
    assert wandb_logger(save_dir=str(tmp_path), log_model=True)._log_model is True
    with pytest.raises(MisconfigurationException):  # what wandb_logger avoids
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ConfigError, match=r"^logger\.log_model='best' is not allowed: use false, true [^\n]* or all"):
        wandb_logger(save_dir=str(tmp_path), log_model="best")


def checkpoint(path: Path, wandb_id: str | None) -> Path:
    """A small checkpoint file as Lightning writes them (torch.save's zip format), with or without the id."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 2, **({"wandb_id": wandb_id} if wandb_id else {})}, path)
    return path


def test_a_checkpoint_resumed_into_a_directory_without_an_id_continues_its_w_and_b_run(tmp_path, capsys):
    from omegaconf import OmegaConf

    from ddpm.training.logs.wandb_run import ID_FILE, adopt_checkpoint_id

    wandb = OmegaConf.create({"_target_": "ddpm.training.logs.wandb_run.wandb_logger", "id": None})
    other = checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt", "run0000a")
    fresh = tmp_path / "b"  # ckpt_path=<run a>/checkpoints/last.ckpt into a new directory: run a's W&B run
    assert adopt_checkpoint_id(fresh, other, wandb) == "run0000a" == (fresh / ID_FILE).read_text().strip()
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith(f"W&B: continuing W&B run run0000a of the checkpoint {other}"), said
    assert adopt_checkpoint_id(fresh, other, wandb) == "run0000a" and capsys.readouterr().out == ""  # again: silent
    own = tmp_path / "c"  # a directory with its own W&B run keeps it, and says so
    (own / ID_FILE).parent.mkdir()
    (own / ID_FILE).write_text("run0000c\n")
    assert adopt_checkpoint_id(own, other, wandb) == "run0000c" == (own / ID_FILE).read_text().strip()
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and "this run directory's W&B run run0000c" in said[0] and "run0000a" in said[0], said
    # nothing to adopt: another logger, an id given with logger.id=, a checkpoint without an id, no local file
    csv = OmegaConf.create({"_target_": "ddpm.training.logs.csv_logger.CSVLogger"})
    no_id = checkpoint(tmp_path / "old.ckpt", None)
    for ckpt, logger in ((other, csv), (other, None), (other, OmegaConf.merge(wandb, {"id": "mine"})),
                         (no_id, wandb), ("last", wandb), (None, wandb)):
        assert adopt_checkpoint_id(tmp_path / "d", ckpt, logger) is None
    assert not (tmp_path / "d").exists() and capsys.readouterr().out == ""


@pytest.mark.parametrize("project", ["a/b", "x" * 129, ""])
def test_an_invalid_project_name_is_one_line(project):
    from ddpm.training.logs.wandb_run import check_project

    with pytest.raises(ConfigError, match=r"^logger\.project=.* is not a W&B project name[^\n]*$"):
        check_project(project)


def records(path: Path):
    """The protobuf records of a ``.wandb`` file: W&B's transaction log uses LevelDB's log framing
    (7-byte file header ``:W&B`` + magic + version; 32 KiB blocks of chunks ``crc32 | length (u16 LE) |
    type`` with type 1 = full, 2 = first, 3 = middle, 4 = last; a block tail under 7 bytes is padding)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def test_a_resumed_offline_run_appends_config_scalars_and_images_to_one_run_id(tmp_path, one_thread, monkeypatch):
    import torch

    from ddpm.evaluation import classifier as C
    from ddpm.runs.train import train

    monkeypatch.delenv("WANDB_MODE")  # offline by logger.offline's default, not by the environment
    # the FD callback with a digits classifier of a fraction of a second (its numbers: tests/unit/evaluation/test_classifier_metrics.py)
    monkeypatch.setitem(C.RECIPES, "digits", C.Recipe(width=4, feature_dim=8, epochs=1, holdout=0.2, shift=0))
    fd = ["callbacks=classifier_metrics", "callbacks.classifier_metrics.every_n_steps=2", "callbacks.classifier_metrics.num_samples=8",
          "callbacks.classifier_metrics.batch_size=8", "callbacks.classifier_metrics.sampler.steps=2",
          f"callbacks.classifier_metrics.cache_dir={tmp_path / 'classifier'}"]
    settings = [*TINY, "logger=wandb", "callbacks.sample_grid.every_n_steps=2",
                "callbacks.throughput.every_n_steps=1", "callbacks.throughput.skip_steps=0"]  # an images/s window per step
    train(compose_train(*settings, *fd, "trainer.max_steps=2", tmp_path=tmp_path)).logger.experiment.finish()
    last = tmp_path / "checkpoints" / "last.ckpt"
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert torch.load(last, weights_only=True, mmap=True)["wandb_id"] == run_id  # the checkpoint names its W&B run
    train(compose_train(*settings, "trainer.max_steps=4", f"ckpt_path={last}", "logger.log_model=true",
                        tmp_path=tmp_path)).logger.experiment.finish()
    import wandb

    wandb.teardown()  # finish() can return before W&B's service has closed the run file; teardown waits for it

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in runs] == [run_id, run_id]  # one W&B run, two parts
    steps, artifacts = [], []
    for part in runs:
        config, history = {}, []
        for record in records(part / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == run_id and record.run.project == "ddpm"
            elif kind == "config":
                config.update({u.key: u.value_json for u in record.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): i.value_json for i in record.history.item})
            elif kind == "artifact":
                artifacts.append(record.artifact)
        assert config["seed"] == "0" and '"base_channels":32' in config["model"]  # the resolved run config
        losses = [h for h in history if "train/loss" in h]
        assert losses and all(float(h["train/loss"]) > 0 and "train/grad_norm" in h and "train/loss_t0-1" in h
                              for h in losses), history
        assert any("samples/ema/_type" in h for h in history), history  # the sample grid
        assert len(list((part / "files" / "media" / "images").rglob("*.png"))) == 1
        assert any(float(h.get("lr-Adam", 0)) > 0 for h in history), history  # lr_monitor
        assert any(float(h.get("perf/images_per_sec", 0)) > 0 for h in history), history  # throughput
        steps.append(sorted(int(h["trainer/global_step"]) for h in history))
        if part == runs[0]:  # the FD curve (callbacks=classifier_metrics) at step 2
            assert [(int(h["trainer/global_step"]), float(h["val/fd"]) >= 0) for h in history if "val/fd" in h] == [(2, True)]
    # the second part continues at the checkpoint's step (the dashboard's x axis), not from 0
    assert max(steps[0]) <= 2 < min(steps[1]) and max(steps[1]) <= 4, steps
    # logger.log_model=true, offline: the last checkpoint as an artifact of this run, for `wandb sync` to upload
    (model,) = artifacts
    assert (model.name, model.type, model.run_id) == (f"model-{run_id}", "model", run_id) and "latest" in model.aliases
    (stored,) = model.manifest.contents
    assert stored.path == "model.ckpt" and stored.size == last.stat().st_size
