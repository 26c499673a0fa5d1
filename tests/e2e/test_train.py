"""The real `train.py` end to end on CPU: train, checkpoint, resume, sample; bad input (the 2-process DDP run:
tests/test_ddp_eval.py)."""

import csv
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

from support.runs import ROOT, TINY, compose_train, run_here, run_train

# What Lightning prints on every run that a user cannot act on (ddpm.training.logs.console.quiet_lightning).
NOISE = {
    "litlogger tip": "💡 Tip:",
    "pytree deprecation": "`isinstance(treespec, LeafSpec)` is deprecated",
    "short epoch": "is smaller than the logging interval",
    "srun hint": "The `srun` command is available on your system but is not used",
}


def fake_srun(folder) -> dict:
    """Environment variables that put an ``srun`` on PATH, as on a SLURM login node."""
    folder.mkdir(exist_ok=True)
    (folder / "srun").write_text("#!/bin/sh\nexit 1\n")
    (folder / "srun").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_train(
        run_dir, "trainer.max_steps=6", "callbacks.checkpoint.every_n_train_steps=3",
        "callbacks.sample_grid.every_n_steps=3", "callbacks.sample_grid.compare_raw=true",
        env=fake_srun(tmp_path_factory.mktemp("bin")),
    )
    return run_dir, proc


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_run_directory_holds_config_checkpoints_and_sample_grids(first_run):
    run_dir, proc = first_run
    assert (run_dir / "config.yaml").is_file()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "step_0000003.ckpt", "step_0000006.ckpt"}
    assert {p.name for p in (run_dir / "samples").iterdir()} == {"step_0000003.png", "step_0000006.png"}
    assert str(run_dir) in proc.stdout  # it says where the outputs went


def test_sample_grid_shows_ema_and_raw_side_by_side(first_run):
    from PIL import Image

    run_dir, _ = first_run
    image = Image.open(run_dir / "samples" / "step_0000006.png")
    # 4 samples of 8x8 upscaled x4 in a 2x2 grid with 2px padding: 70 px square, twice side by side.
    assert image.size == (140, 70)


def test_checkpoint_holds_step_ema_optimizer_and_schedule(first_run):
    run_dir, _ = first_run
    ckpt = load(run_dir / "checkpoints" / "last.ckpt")
    state = ckpt["state_dict"]
    assert ckpt["global_step"] == 6
    assert state["ema.n_averaged"].item() == 6
    assert "schedule.alphas_cumprod" in state and state["schedule.betas"].shape == (20,)
    assert not any(k.startswith("ema.module.schedule") for k in state)  # the EMA holds the network only
    assert ckpt["optimizer_states"][0]["state"][0]["step"].item() == 6
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    raw = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # averaged, not a copy


def test_loss_per_timestep_bucket_grad_norm_and_lr_are_logged(first_run):
    run_dir, _ = first_run
    with open(run_dir / "csv" / "metrics.csv") as f:
        columns = set(csv.DictReader(f).fieldnames)
    assert {"train/loss", "train/grad_norm", "lr-Adam", "train/loss_t0-1", "train/loss_t18-19"} <= columns


def test_throughput_is_logged_per_window(first_run):
    run_dir, _ = first_run
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/images_per_sec")]
    # windows of trainer.log_every_n_steps=2 steps after 2 skipped: they end at steps 4 and 6
    assert [int(r["step"]) for r in rows] == [4, 6]
    assert all(float(r["perf/images_per_sec"]) > 0 for r in rows)


def test_resume_continues_step_ema_and_optimizer(first_run, tmp_path):
    from ddpm.runs.train import train

    run_dir, _ = first_run
    first = load(run_dir / "checkpoints" / "last.ckpt")
    train(compose_train(  # in this process: first_run is the real command
        *TINY, "trainer.max_steps=9", "callbacks.checkpoint.every_n_train_steps=3",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "callbacks.sample_grid.every_n_steps=0", tmp_path=tmp_path,
    ))
    second = load(tmp_path / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 9
    assert second["state_dict"]["ema.n_averaged"].item() == 9  # EMA restored and continued, not restarted
    assert second["optimizer_states"][0]["state"][0]["step"].item() == 9
    assert second["lr_schedulers"][0]["last_epoch"] == 9
    assert torch.equal(second["state_dict"]["schedule.betas"], first["state_dict"]["schedule.betas"])
    assert (tmp_path / "samples" / "step_0000009.png").is_file()  # the final grid


# Values are checked in-process by tests/test_bad_input.py; an unknown group option fails in Hydra itself
# (train.py's main in this process: conftest.run_here).
@pytest.mark.parametrize("overrides, message", [
    (["schedule=nope"], "Could not find 'schedule/nope'"),
])
def test_bad_input_gets_one_clear_line(tmp_path, overrides, message, monkeypatch, capfd):
    code, _, err = run_here("train.py", *TINY, f"hydra.run.dir={tmp_path}", "trainer.max_steps=1", *overrides,
                            monkeypatch=monkeypatch, capfd=capfd)
    assert code != 0
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("overrides, message", [
    (["schedule.num_timesteps=0"], "num_timesteps=0 is not allowed"),
    (["data.image_size=7"], "image_size=7 cannot be downsampled"),
    (["denoiser.prediction_type=score"], "prediction_type='score' is not allowed"),
    (["data=mnist", "data.root=/nonexistent/dir", "model.attn_resolutions=[]"], "/nonexistent/dir"),
    (["data=folder", "data.root=/nonexistent/images", "model.attn_resolutions=[]"], "/nonexistent/images"),
    (["module.compile=fast"], "compile='fast' is not allowed"),
    (["module.channels_last=maybe"], "channels_last='maybe' is not allowed"),
    (["data.on_device=gpu"], "on_device='gpu' is not allowed"),
])
def test_bad_input_raises_a_config_error_naming_the_value(tmp_path, overrides, message):
    from hydra.utils import instantiate

    from ddpm.errors import root_config_error
    from ddpm.runs.build import build_module

    cfg = compose_train(*overrides, tmp_path=tmp_path)
    with pytest.raises(Exception) as info:
        build_module(cfg)
        instantiate(cfg.data).setup("fit")
    error = root_config_error(info.value)
    assert error is not None and message in str(error) and "\n" not in str(error)


def test_empty_image_folder_is_named(tmp_path):
    from hydra.utils import instantiate

    from ddpm.data.images import DataError

    (tmp_path / "empty").mkdir()
    cfg = compose_train("data=folder", f"data.root={tmp_path / 'empty'}", tmp_path=tmp_path)
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        instantiate(cfg.data).setup("fit")


def test_help_lists_config_groups_and_options(monkeypatch, capfd):
    code, out, _ = run_here("train.py", "--help", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0
    for line in ("schedule: cosine, linear, quadratic, scaled_linear, sigmoid", "trainer: cpu, ddp, default, gpu",
                 "logger: csv, none, tensorboard, wandb"):
        assert line in out


def test_wandb_is_not_imported_unless_chosen(tmp_path):
    # everything the default run builds before fitting: module, logger, callbacks, trainer
    code = ("import sys; from support.runs import compose_train; from ddpm.runs.build import build_module; "
            "from ddpm.runs.train import build_trainer; "
            f"cfg = compose_train('trainer.accelerator=cpu', tmp_path={str(tmp_path)!r}); "
            "build_module(cfg); trainer = build_trainer(cfg); "
            "print(type(trainer.logger).__name__, 'wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True)
    assert out.stdout.split()[-2:] == ["CSVLogger", "False"], out.stderr[-3000:]


def test_the_default_run_prints_none_of_lightnings_noise(first_run):
    # the short-epoch warning needs fewer batches an epoch than first_run has: the next test checks it
    _, proc = first_run
    assert [name for name, text in NOISE.items() if text in proc.stderr] == []
    assert "GPU available:" in proc.stdout  # Lightning's own info lines still show, on stdout:
    assert "GPU available:" not in proc.stderr and "Seed set to" not in proc.stderr  # stderr is for errors


def test_the_progress_bar_counts_the_steps_of_the_whole_run(tmp_path, capsys):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from ddpm.diffusion.samplers import DDPMSampler
    from ddpm.training.logs.console import quiet_lightning
    from ddpm.training.callbacks.progress import StepProgressBar
    from ddpm.training.callbacks.sample_grid import with_progress

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    quiet_lightning()  # as train() does
    bar = StepProgressBar(refresh_rate=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=7, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.zeros(3, 1))))  # 3 batches an epoch
    out = capsys.readouterr().out
    assert trainer.current_epoch > 1 and (bar.train_progress_bar.n, bar.train_progress_bar.total) == (7, 7)
    assert "7/7" in out and "Epoch" not in out  # one bar across the three epochs
    sampler = DDPMSampler()  # grids show their sampling progress as a copy of the module's sampler
    assert with_progress(sampler).progress and not sampler.progress


def test_lightning_noise_is_silenced_at_its_source_and_real_warnings_stay(tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from ddpm.runs import train as train_module
    from ddpm.runs.train import train
    from ddpm.training.logs.console import quiet_lightning

    calls = []
    monkeypatch.setattr(train_module, "quiet_lightning", lambda *a, **k: calls.append(a) or quiet_lightning(*a, **k))
    monkeypatch.setenv("PATH", fake_srun(tmp_path / "bin")["PATH"])
    cfg = compose_train(  # one batch an epoch, fewer than log_every_n_steps=50
        "model=unet_tiny", "schedule.num_timesteps=20", "data.batch_size=16", "trainer.accelerator=cpu",
        "trainer.max_steps=1", "+trainer.limit_train_batches=1", "callbacks.sample_grid=null",
        "callbacks.progress_bar.refresh_rate=0", tmp_path=tmp_path,
    )
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # sees only what passes the logger's filters
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    monkeypatch.setattr(rank_zero_log, "filters", [])  # train() must install its own, not rely on an earlier test's
    rank_zero_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(cfg)
            warnings.warn("a real warning", PossibleUserWarning)
    finally:
        rank_zero_log.removeHandler(handler)
    printed = [str(w.message) for w in caught] + [r.getMessage() for r in logged]
    assert [name for name, text in NOISE.items() if any(text in line for line in printed)] == []
    assert "a real warning" in printed and any(line.startswith("GPU available") for line in printed)
    assert len(calls) == 1  # once per run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning(num_nodes=2)  # several nodes need srun: the hint stays
        SLURMEnvironment._validate_srun_used()
    assert [NOISE["srun hint"] in str(w.message) for w in caught] == [True]


# A 2-process DDP training (grids, checkpoint, one report) runs in tests/test_ddp_eval.py's ddp_jobs.
