"""DDP evaluation is exact: a real 2-process gloo job (the FID and classifier-metrics callbacks inside ``train.py
trainer=ddp``, and ``evaluate.py devices=2``) gives bit-equal numbers to one process on the same weights
(that the samples of ``generate_shard`` do not depend on the number of processes:
unit/evaluation/test_sharded_sampling.py).

Two script launches in all, side by side (each starts two interpreters, one after the other): a DDP
training and a 2-process evaluation of a checkpoint saved here; the 1-process sides run in-process.
Every process runs one CPU thread (OMP_NUM_THREADS=1 / torch.set_num_threads(1)), so the kernels
are the same on both sides."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from support.runs import CONF, ROOT, TINY, compose_train
from ddpm.data.pixels import to_uint8
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation import classifier as C
from ddpm.evaluation.distances import frechet_distance
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import extract_features
from ddpm.evaluation.npz import load_npz, save_images_npz
from ddpm.evaluation.reference import reference_statistics
from ddpm.evaluation.sampling import balanced_labels, chunk_seed
from ddpm.runs.build import build_module
from ddpm.runs.evaluate import evaluate
from ddpm.runs.load import load_run
from support.classifier import SMALL
from support.standins import StandIn

LAUNCHER_VARIABLES = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE",
                      "GROUP_RANK", "TORCHELASTIC_RUN_ID"}  # a job around pytest is not the jobs started here
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: a second thread only adds contention


# ---- a real 2-process gloo job against one process ------------------------------------------------
def start(tmp, name: str, script: str, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """``python script overrides...`` from the repo root, one thread per process, its output in a file."""
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAUNCHER_VARIABLES}
    env.update(PYTHONUNBUFFERED="1", **ONE_THREAD)  # Lightning starts both processes, on a free port
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, script, *overrides], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # its own group: see finish
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait(timeout=600) != 0:
        pytest.fail(f"{' '.join(map(str, proc.args[1:]))} exited {proc.returncode}\n{log.read_text()[-6000:]}")


@pytest.fixture(scope="module")
def ddp_jobs(tmp_path_factory):
    """Two 2-process CPU jobs, run side by side (each leaves a core idle while its second process starts):

    - ``train.py trainer=ddp trainer.devices=2``: a conditional tiny run trained 2 steps (a sample grid
      and a checkpoint at step 2), with the
      classifier-metrics callback (10 samples in chunks of 4: the ranks hold 8 and 2) and the FID
      callback with a stand-in extractor (6 samples in one chunk of 8: rank 1 holds none) at step 2;
    - ``evaluate.py devices=2`` of a conditional tiny checkpoint saved here (metrics=[fd,accuracy]; 20
      samples in chunks of 6: the ranks hold 12 and 8, two of every class for the per-class FD).
    """
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = compose_train("model=unet_tiny", "schedule.num_timesteps=20", "conditioning=class",
                        tmp_path=tmp / "eval_run")
    with pytest.MonkeyPatch.context() as mp:  # the small recipe (about a second), cached for the subprocesses
        mp.setitem(C.RECIPES, "digits", SMALL)
        C.load_or_train(instantiate(cfg.data), tmp / "classifier")
    module = build_module(cfg)
    with torch.no_grad():
        for p in module.ema.module.parameters():  # the EMA's zero output layer would make the net silent
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    (tmp / "eval_run" / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, tmp / "eval_run" / "config.yaml", resolve=True)
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, tmp / "eval_run" / "checkpoints" / "last.ckpt")
    evaluation = [f"ckpt_path={tmp / 'eval_run' / 'checkpoints' / 'last.ckpt'}", "device=cpu", "sampler=ddim",
                  "sampler.steps=3", "sampler.eta=0.5", "num_samples=20", "batch_size=6", "metrics=[fd,accuracy]",
                  "progress=false", f"classifier_cache_dir={tmp / 'classifier'}"]
    fid = "+callbacks.fid."
    jobs = [start(tmp, "train", "train.py", *TINY, f"hydra.run.dir={tmp / 'run'}",
                  "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                  "trainer.benchmark=false", "trainer.max_steps=2", "conditioning=class",
                  "callbacks=classifier_metrics", "callbacks.checkpoint.every_n_train_steps=2",
                  "callbacks.sample_grid.every_n_steps=2",
                  "callbacks.classifier_metrics.every_n_steps=2", "callbacks.classifier_metrics.num_samples=10",
                  "callbacks.classifier_metrics.batch_size=4", "callbacks.classifier_metrics.sampler.steps=3",
                  "callbacks.classifier_metrics.seed=3", f"callbacks.classifier_metrics.cache_dir={tmp / 'classifier'}",
                  f"{fid}_target_=ddpm.training.callbacks.fid.FIDCallback", f"{fid}every_n_steps=2", f"{fid}num_samples=6",
                  f"{fid}batch_size=8", f"{fid}seed=4", f"{fid}reference_count=64", f"{fid}cache_dir={tmp / 'fid'}",
                  f"{fid}sampler._target_=ddpm.diffusion.samplers.DDIMSampler", f"{fid}sampler.steps=3",
                  f"{fid}sampler.eta=1.0", f"{fid}feature_extractor._target_=support.standins.StandIn"),
            start(tmp, "evaluate", "evaluate.py", *evaluation, "devices=2", f"out_dir={tmp / 'two'}",
                  f"hydra.run.dir={tmp / 'hydra'}")]
    try:
        for proc, log in jobs:
            finish(proc, log)
    finally:  # one failed: stop the other job (its launcher and the process it started)
        for proc, _ in jobs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    with open(tmp / "run" / "csv" / "metrics.csv") as f:
        logged = {k: float(v) for row in csv.DictReader(f) for k, v in row.items() if k.startswith("val/") and v}
    # the training run as load_run takes it: its config without the stand-in (a target outside ddpm is refused)
    cfg = OmegaConf.load(tmp / "run" / "config.yaml")
    del cfg.callbacks.fid["feature_extractor"]
    (tmp / "loadable" / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, tmp / "loadable" / "config.yaml")
    os.link(tmp / "run" / "checkpoints" / "last.ckpt", tmp / "loadable" / "checkpoints" / "last.ckpt")
    return tmp, logged, evaluation


def test_the_callbacks_under_ddp_equal_one_process_on_the_same_weights(ddp_jobs):
    tmp, logged, _ = ddp_jobs
    _, run_cfg, module = load_run(tmp / "loadable" / "checkpoints" / "last.ckpt")  # the weights of step 2
    assert module.num_classes == 10
    trainer = SimpleNamespace(datamodule=instantiate(run_cfg.data), world_size=1, global_rank=0)
    single = instantiate(run_cfg.callbacks.classifier_metrics).evaluate(trainer, module)
    assert single == {"val/fd": logged["val/fd"], "val/accuracy": logged["val/accuracy"]}  # bit-equal
    fid = instantiate(run_cfg.callbacks.fid, feature_extractor=StandIn())  # reads the reference rank 0 cached
    assert fid.evaluate(trainer, module) == logged["val/fid_6"]  # bit-equal

    # and against an independent computation: balanced labels by index, the seed of chunk 0, the
    # reference statistics rank 0 cached (the 2 ranks summed their moments: one process's sums in
    # another order, equal to float64 rounding, which the singular 6-sample FID would amplify)
    images = to_uint8(module.sample(6, torch.Generator().manual_seed(chunk_seed(4, 0)), sampler=DDIMSampler(3, eta=1.0),
                                    cond=balanced_labels(6, 10)))
    stats = FeatureStats.from_features(extract_features(images, StandIn())["pool3"])
    ref = load_npz(tmp / "fid" / "digits-train-n64-1x8px.npz")
    assert logged["val/fid_6"] == frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
    single_ref = reference_statistics(trainer.datamodule, StandIn(), 64)
    assert np.allclose(ref.mu, single_ref.mu, rtol=0, atol=1e-13) and np.allclose(ref.sigma, single_ref.sigma, rtol=0, atol=1e-13)


def test_the_ddp_run_writes_grid_and_checkpoint_once_and_reports_once(ddp_jobs):
    tmp = ddp_jobs[0]
    assert {p.name for p in (tmp / "run" / "samples").iterdir()} == {"step_0000002.png"}
    assert {p.name for p in (tmp / "run" / "checkpoints").iterdir()} == {"last.ckpt", "step_0000002.ckpt"}
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["ema.n_averaged"].item() == 2  # one EMA update a step
    log = (tmp / "train.log").read_text()
    assert "Starting with 2 processes" in log, log[-3000:]  # a real 2-process job
    assert log.count("run directory:") == 1  # rank zero reports once


def test_evaluate_with_two_processes_equals_one_process(ddp_jobs):
    tmp, _, common = ddp_jobs
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        one = evaluate(compose("evaluate", overrides=[*common, f"out_dir={tmp / 'one'}"]))
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    for key in ("fd", "accuracy", "fd_per_class", "label_counts", "num_samples"):
        assert two[key] == one[key], key  # bit-equal (JSON round-trips floats exactly)
    with np.load(tmp / "one" / "samples.npz") as a, np.load(tmp / "two" / "samples.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
        assert a["labels"].tolist() == balanced_labels(20, 10).tolist()
    assert None not in one["fd_per_class"]


def test_devices_are_checked_in_one_line(tmp_path, monkeypatch):
    for name in ("SLURM_NTASKS", "MASTER_ADDR", *LAUNCHER_VARIABLES):  # no cluster job around this test
        monkeypatch.delenv(name, raising=False)
    save_images_npz(tmp_path / "b.npz", np.zeros((2, 8, 8, 1), np.uint8))
    cases = [
        (["devices=0"], "devices=0 is not allowed: use an integer >= 1"),
        (["num_nodes=two"], "num_nodes='two' is not allowed"),
        ([f"samples_path={tmp_path / 'b.npz'}", "ckpt_path=null", "devices=2"], "samples_path is scored by one process"),
        (["device=cuda:1", "devices=2"], "device='cuda:1' with devices=2: use device=cuda"),
        (["device=cuda", "devices=99"], "devices=99 is not allowed here: this node has"),
        (["device=cpu", "num_nodes=2"], "num_nodes=2 needs the processes of a cluster job"),
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides, match in cases:
            with pytest.raises(ConfigError, match=match) as err:  # before anything is loaded or launched
                evaluate(compose("evaluate", overrides=["ckpt_path=absent.ckpt", *overrides]))
            assert "\n" not in str(err.value)
