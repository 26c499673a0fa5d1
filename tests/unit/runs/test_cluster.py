"""What makes a run survive a cluster, checked without one (tests/e2e/test_slurm.py submits to a real one):
the newest complete checkpoint of a run directory, ``ckpt_path=auto`` and SLURM restarts,
``resume=RUN_DIR``, and the checks that stop a bad submission before anything reaches the queue."""

import os
import runpy
import sys

import pytest
import torch
from support.runs import ROOT, TINY
from hydra.core.global_hydra import GlobalHydra

from ddpm.errors import ConfigError
from ddpm.runs.resume import expand_resume, override_key
from ddpm.runs.train import checkpoint_to_resume
from ddpm.training.checkpoints import find_resume


def fake_checkpoint(path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(1)}}, path)


# --- the newest complete checkpoint -----------------------------------------------------------------


def test_the_newest_checkpoint_is_the_highest_step_among_hpc_and_last(tmp_path):
    assert find_resume(tmp_path) is None  # a first start: nothing to resume
    fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 12)  # the requeue signal's save
    fake_checkpoint(tmp_path / "checkpoints" / "step_0000010.ckpt", 10)
    assert find_resume(tmp_path) == (tmp_path / "hpc_ckpt_1.ckpt", 12)
    # a later SIGTERM (preemption) wrote last.ckpt past it: Lightning's "hpc" would take the older file
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 15)
    assert find_resume(tmp_path) == (tmp_path / "checkpoints" / "last.ckpt", 15)
    # a save cut short is passed over, and the temp file a killed save left is removed
    good = (tmp_path / "hpc_ckpt_2.ckpt")
    fake_checkpoint(good, 20)
    good.write_bytes(good.read_bytes()[:100])
    orphan = tmp_path / "checkpoints" / ".last.ckpt.abc.partial"
    orphan.write_bytes(b"half")
    assert find_resume(tmp_path) == (tmp_path / "checkpoints" / "last.ckpt", 15)
    assert not orphan.exists()


def test_auto_resumes_in_place_or_starts_fresh_and_a_slurm_restart_is_auto(tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert checkpoint_to_resume("auto", tmp_path) is None  # nothing yet: step 0, not an error
    assert "no checkpoint in" in capsys.readouterr().out
    assert checkpoint_to_resume(None, tmp_path) is None
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 7)
    assert checkpoint_to_resume(None, tmp_path) is None  # null outside SLURM: a fresh run, as asked
    assert checkpoint_to_resume("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    # a SLURM batch task (what Lightning's SLURMEnvironment detects): null means auto, so a requeued
    # job continues its run
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert checkpoint_to_resume(None, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert "resuming" in capsys.readouterr().out


# --- resume=RUN_DIR ---------------------------------------------------------------------------------


def make_run(run_dir, overrides: list[str]) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "config.yaml").write_text("seed: 0\n")


def test_resume_puts_back_the_runs_overrides_and_what_is_given_now_wins(tmp_path):
    run = tmp_path / "run"
    make_run(run, ["model=unet_tiny", "trainer.max_steps=4", "ckpt_path=auto", "+extra.x=1", "resume=/old"])
    args = expand_resume([f"resume={run}", "trainer.max_steps=6"])
    assert args == ["model=unet_tiny", "+extra.x=1", "trainer.max_steps=6", f"hydra.run.dir={run}", "ckpt_path=auto",
                    f"resume={run}"]
    # a submission resumes the job's directory: sweep dir and subdir
    args = expand_resume(["-m", "hydra/launcher=slurm", f"resume={run}", "ckpt_path=/x.ckpt"])
    assert args[:3] == ["model=unet_tiny", "trainer.max_steps=4", "+extra.x=1"]
    assert f"hydra.sweep.dir={tmp_path}" in args and "hydra.sweep.subdir=run" in args and "ckpt_path=/x.ckpt" in args
    assert "ckpt_path=auto" not in args
    assert expand_resume(["model=mlp"]) == ["model=mlp"]  # without resume=, nothing changes
    assert [override_key(o) for o in ("+a.b=1", "~c", "model@x=y", "++d=2")] == ["a.b", "c", "model", "d"]


@pytest.mark.parametrize("what, words", [
    ("missing", "resume={run} does not exist: give the run directory of a training"),
    ("file", "resume={run} is a file"),
    ("empty", "resume={run} is not a run directory of train.py: it has no config.yaml and .hydra/overrides.yaml"),
])
def test_resume_of_something_that_is_not_a_run_is_one_line(tmp_path, what, words):
    run = tmp_path / "x"
    if what == "file":
        run.write_text("x")
    elif what == "empty":
        run.mkdir()
    with pytest.raises(ConfigError, match="^" + words.format(run=run).replace(".", r"\.") + "[^\n]*$"):
        expand_resume([f"resume={run}"])


def run_train_py(argv: list[str], monkeypatch, capfd) -> tuple[int, str, str]:
    """``python train.py argv`` in this process (runpy, as after the imports): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), *argv])
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(key, raising=False)
    capfd.readouterr()
    code = 0
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return code, out, err


def test_resume_continues_the_run_in_its_directory_with_its_options(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    fast = ["callbacks.sample_grid=null", "callbacks.throughput=null", "logger=none"]
    code, _, err = run_train_py([*TINY, *fast, "trainer.max_steps=1", f"hydra.run.dir={run}"], monkeypatch, capfd)
    assert code == 0, err
    code, out, err = run_train_py([f"resume={run}", "trainer.max_steps=2"], monkeypatch, capfd)
    assert code == 0, err
    assert f"resuming {run} from {run / 'checkpoints' / 'last.ckpt'} (step 1)" in out
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    config = (run / "config.yaml").read_text()  # the resumed run was composed with the first run's options
    assert "num_timesteps: 20" in config and "ckpt_path: auto" in config and f"resume: {run}" in config


# --- a submission that cannot work is one line, and nothing is submitted ------------------------------

LAUNCHER = dict(tasks_per_node=1, gpus_per_node=None, nodes=1, max_num_timeout=0, signal_delay_s=120,
                additional_parameters={"signal": "USR1@120"})
ALLOCATIONS = [  # (trainer, launcher fields changed, words)
    (dict(devices=2), dict(tasks_per_node=1), "hydra.launcher.tasks_per_node=1 but trainer.devices=2: SLURM must start one "
                                              "task per device"),
    (dict(devices=-1), {}, "trainer.devices=-1 cannot be submitted: a SLURM job needs the number of devices per node"),
    (dict(devices="auto"), {}, "trainer.devices='auto' cannot be submitted"),
    (dict(accelerator="gpu", devices=2), dict(tasks_per_node=2, gpus_per_node=1),
     "hydra.launcher.gpus_per_node=1 but trainer.devices=2 with trainer.accelerator=gpu: each task needs its own GPU"),
    (dict(accelerator="gpu"), {}, "hydra.launcher.gpus_per_node=None but trainer.devices=1"),
    (dict(), dict(gpus_per_node=1), "hydra.launcher.gpus_per_node=1 for a CPU job (trainer.accelerator=cpu)"),
    (dict(num_nodes=2), {}, "hydra.launcher.nodes=1 but trainer.num_nodes=2: Lightning must know every node"),
    (dict(), dict(max_num_timeout=3), "hydra.launcher.max_num_timeout=3: Lightning's SLURMEnvironment requeues"),
    (dict(), dict(additional_parameters={"signal": "USR2@90"}),
     "hydra.launcher.additional_parameters.signal='USR2@90': Lightning saves and requeues on USR1"),
    (dict(), dict(signal_delay_s=0), "hydra.launcher.signal_delay_s=0 is not allowed"),
]


@pytest.mark.parametrize("trainer, launcher, words", ALLOCATIONS, ids=[w.split(":")[0] for *_, w in ALLOCATIONS])
def test_an_allocation_that_cannot_run_the_trainer_is_one_line(trainer, launcher, words):
    from omegaconf import OmegaConf

    from ddpm.runs.slurm_launcher import check_allocation

    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 1, "num_nodes": 1, **trainer})
    with pytest.raises(ConfigError, match="^" + words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_allocation(trainer, {**LAUNCHER, **launcher})
    check_allocation(OmegaConf.create({"accelerator": "cpu", "devices": 1, "num_nodes": 1}), LAUNCHER)  # a good one


CPU = ["trainer.accelerator=cpu", "hydra.launcher.gpus_per_node=null"]
SUBMISSIONS = [  # through train.py -m hydra/launcher=slurm, as a user types it
    ([*CPU, "trainer.devices=2", "hydra.launcher.tasks_per_node=1"],
     "hydra.launcher.tasks_per_node=1 but trainer.devices=2: SLURM must start one task per device"),
    ([*CPU, "data.batch_size=0"], "data.batch_size=0 is not allowed"),  # every train.py check, before submitting
    ([*CPU, "logger=wandb", "logger.project=a/b"], "logger.project='a/b' is not allowed"),
    ([*CPU, "trainer.devices=1,2"],  # a sweep is all or nothing: job 1 would start 1 task for 2 devices
     "job #1 (model=unet_tiny trainer.accelerator=cpu trainer.devices=2): hydra.launcher.tasks_per_node=1"),
    (["resume={missing}"], "resume={missing} does not exist"),
]


@pytest.mark.parametrize("args, words", SUBMISSIONS, ids=[" ".join(a) for a, _ in SUBMISSIONS])
def test_a_bad_submission_is_one_line_and_nothing_is_submitted(args, words, tmp_path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    args = [a.format(missing=tmp_path / "missing") for a in args]
    code, _, err = run_train_py(["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", "model=unet_tiny", *args],
                                monkeypatch, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert words.format(missing=tmp_path / "missing") in lines[0] and lines[0].endswith("(nothing was submitted)") \
        or "resume=" in words
    assert not (sweep / ".submitit").exists()


def test_a_job_requeued_max_requeues_times_is_not_requeued_again(monkeypatch):
    from ddpm.training.callbacks.stop_save import requeues_spent

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert not requeues_spent(None) and not requeues_spent(1) and requeues_spent(0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")  # SLURM counts the requeues of a job
    assert not requeues_spent(None) and not requeues_spent(4) and requeues_spent(3) and requeues_spent(2)


def test_max_requeues_is_checked_before_training():
    from support.runs import compose_train

    from ddpm.runs.validate import validate_train_config

    with pytest.raises(ConfigError, match=r"^callbacks\.stop_save\.max_requeues=-1 is not allowed: use an integer >= 0"):
        validate_train_config(compose_train("callbacks.stop_save.max_requeues=-1", tmp_path="/tmp/unused"))
