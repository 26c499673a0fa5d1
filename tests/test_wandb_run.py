"""W&B runs that continue: the run id kept in the run directory, and the real offline run files."""

import struct
from pathlib import Path

import pytest
from conftest import TINY, compose_train

from ddpm.errors import ConfigError

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_the_run_id_is_stored_in_the_run_dir_and_reused(tmp_path):
    from hydra.utils import instantiate

    from ddpm.training.wandb_run import ID_FILE, wandb_logger

    first = instantiate(compose_train("logger=wandb", tmp_path=tmp_path).logger)  # conf/logger/wandb.yaml
    again = instantiate(compose_train("logger=wandb", tmp_path=tmp_path).logger)
    stored = (tmp_path / ID_FILE).read_text().strip()
    assert first.version == again.version == stored and len(stored) == 8
    assert first._wandb_init["resume"] == "allow" and first._offline
    other = wandb_logger(save_dir=str(tmp_path / "other"))
    assert other.version != stored  # another run directory, another W&B run
    chosen = wandb_logger(save_dir=str(tmp_path), id="myrun01")  # logger.id=: that run, from now on
    assert chosen.version == (tmp_path / ID_FILE).read_text().strip() == "myrun01"
    assert wandb_logger(save_dir=str(tmp_path)).version == "myrun01"


@pytest.mark.parametrize("project", ["a/b", "x" * 129, ""])
def test_an_invalid_project_name_is_one_line(project):
    from ddpm.training.wandb_run import check_project

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


@pytest.fixture
def one_thread():
    """One torch thread while the tiny run trains (on a busy 2-core machine two made it several times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_resumed_offline_run_appends_config_scalars_and_images_to_one_run_id(tmp_path, one_thread):
    from ddpm.runs.train import train

    settings = [*TINY, "logger=wandb", "callbacks.sample_grid.every_n_steps=2", "callbacks.throughput=null"]
    train(compose_train(*settings, "trainer.max_steps=2", tmp_path=tmp_path)).logger.experiment.finish()
    last = tmp_path / "checkpoints" / "last.ckpt"
    train(compose_train(*settings, "trainer.max_steps=4", f"ckpt_path={last}", tmp_path=tmp_path)).logger.experiment.finish()
    import wandb

    wandb.teardown()  # finish() can return before W&B's service has closed the run file; teardown waits for it

    run_id = (tmp_path / "wandb_id").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in runs] == [run_id, run_id]  # one W&B run, two parts
    steps = []
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
        assert config["seed"] == "0" and '"base_channels":32' in config["model"]  # the resolved run config
        losses = [h for h in history if "train/loss" in h]
        assert losses and all(float(h["train/loss"]) > 0 and "train/grad_norm" in h and "train/loss_t0-1" in h
                              for h in losses), history
        assert any("samples/ema/_type" in h for h in history), history  # the sample grid
        assert len(list((part / "files" / "media" / "images").rglob("*.png"))) == 1
        steps.append(sorted(int(h["trainer/global_step"]) for h in history))
    # the second part continues at the checkpoint's step (the dashboard's x axis), not from 0
    assert max(steps[0]) <= 2 < min(steps[1]) and max(steps[1]) <= 4, steps
