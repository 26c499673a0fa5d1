"""`python train.py -m hydra/launcher=slurm` on a real SLURM cluster (scripts/slurm_cluster.sh starts a
one-node one here): submitted through hydra-submitit-launcher, run by srun, finished, checkpoint written."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from support.runs import ROOT, TINY, run_script

pytestmark = pytest.mark.slurm


def cluster_up() -> str | None:
    """None when ``sbatch`` exists and a node is ready, else why the tests cannot run."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH: start a cluster with `bash scripts/slurm_cluster.sh` (installs slurm-wlm)"
    try:
        # scontrol ping answers at once when no controller runs (sinfo retries for ~10 s)
        if subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode != 0:
            return "no slurmctld answers `scontrol ping`: start the cluster with `bash scripts/slurm_cluster.sh`"
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo failed ({error}): start the cluster with `bash scripts/slurm_cluster.sh`"
    if not {"idle", "mixed", "allocated"} & set(states):
        return f"no SLURM node is up (sinfo: {states or 'nothing'}): run `bash scripts/slurm_cluster.sh`"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    reason = cluster_up()
    if reason:
        print(f"test_slurm skipped: {reason}")
        pytest.skip(reason)


def submit(sweep_dir, *overrides: str):
    """Submit one tiny CPU training and wait for it; returns the submitit log of task 0 and the run dir."""
    proc = run_script(
        "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}", *TINY, "trainer.max_steps=2", "callbacks.sample_grid=null", *overrides,
        timeout=300, env={"OMP_NUM_THREADS": "1"},  # sbatch passes it on: one torch thread per task
    )
    (job_dir,) = [p for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]  # one job, named by its id
    log = (job_dir / f"{job_dir.name}_0_log.out").read_text()
    assert "Job completed successfully" in log, proc.stdout[-2000:] + log[-3000:]
    return log, sweep_dir / "0"


def test_a_sweep_is_one_job_array_of_one_task_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}", *TINY, "trainer.max_steps=2", "callbacks.sample_grid=null", "schedule=linear,cosine",
        timeout=300, env={"OMP_NUM_THREADS": "1"},
    )
    folders = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())
    array = folders[0]  # submitit's folder of the array's submission, then one per task
    jobs = [f"{array}_0", f"{array}_1"]
    assert folders == [array, *jobs], (folders, proc.stdout[-2000:])  # one array, a task per sweep point
    for index, schedule in enumerate(["linear", "cosine"]):
        log = (sweep / ".submitit" / jobs[index] / f"{jobs[index]}_0_log.out").read_text()
        assert "Job completed successfully" in log and "global_rank=0(1)" in log, log[-3000:]  # run under SLURM
        assert "SLURM auto-requeueing enabled" in log  # Lightning's SLURMEnvironment owns requeue
        run_dir = sweep / str(index)
        assert f"schedule={schedule}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 2 and (run_dir / "config.yaml").is_file()


def test_two_tasks_run_ddp_over_gloo(tmp_path):
    log, run_dir = submit(
        tmp_path / "sweep", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=32-true", "trainer.benchmark=false",
    )
    # SLURM started both processes (tasks_per_node came from trainer.devices); Lightning joined them
    assert "global_rank=0(2)" in log and "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["ema.n_averaged"].item() == 2


def job_id_of(sweep_dir, timeout: float = 120) -> str:
    """The SLURM id of the one job submitted into ``sweep_dir`` (submitit names a folder by it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir() and p.name.isdigit()]
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError(f"no job was submitted into {sweep_dir}")


def wait_for(path, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, _ = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
            raise AssertionError(f"{path} never appeared (submitter exit {proc.poll()}):\n{(out or '')[-3000:]}")
        time.sleep(0.1)


def test_a_preempted_ddp_job_resumes_in_place_and_ends_as_an_uninterrupted_one(tmp_path):
    """Two tasks (DDP over gloo) under hydra/launcher=slurm, preempted twice as clusters do:

    1. USR1, what ``--signal=USR1@<delay>`` sends before a time limit: every rank finishes its step,
       Lightning writes ``hpc_ckpt_1.ckpt`` and requeues the job;
    2. later, ``scontrol requeue`` (an admin, or PreemptMode=REQUEUE): SLURM sends SIGTERM, the ranks
       stop after the same step and write ``checkpoints/last.ckpt``, SLURM requeues.

    Each restart continues in the same run directory from the newest checkpoint (the second from
    last.ckpt, newer than the HPC one Lightning's own choice would take), keeps the W&B run id, and
    the job ends with the weights, EMA and optimizer state of the same job run without interruption.
    """
    settings = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.benchmark=false", "trainer.max_steps=40", "callbacks.checkpoint.every_n_train_steps=5",
        "logger=wandb", "callbacks.throughput=null",
    ]
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    pre = tmp_path / "preempted"
    submitter = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null",
         "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={pre}", *TINY, "callbacks.sample_grid=null", *settings],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    job = job_id_of(pre)
    run_dir = pre / "0"
    wait_for(run_dir / "checkpoints" / "step_0000010.ckpt", submitter)
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)  # 1. before a time limit
    wait_for(run_dir / "checkpoints" / "step_0000025.ckpt", submitter)  # written after the first restart
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)  # 2. preempted: SIGTERM, requeue
    out, _ = submitter.communicate(timeout=600)
    assert submitter.returncode == 0, out[-3000:]

    log = (pre / ".submitit" / job / f"{job}_0_log.out").read_text()
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"], (list(run_dir.iterdir()), log[-3000:])
    first = torch.load(hpc[0], map_location="cpu", weights_only=True)["global_step"]
    assert 10 <= first < 25, first  # saved mid-run, at a step boundary
    assert f"resuming {run_dir} from {hpc[0]} (step {first})" in log, log[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    second = re.search(rf"SIGTERM at step (\d+): saved {re.escape(str(last))}", log)
    assert second and 25 <= int(second[1]) < 40, log[-3000:]
    assert f"resuming {run_dir} from {last} (step {second[1]})" in log, log[-3000:]  # not the older hpc_ckpt_1
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=2" in restarts, restarts

    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 40
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert final["wandb_id"] == run_id
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(parts) == 3 and {p.name.rsplit("-", 1)[1] for p in parts} == {run_id}  # one W&B run, three starts

    _, ref_dir = submit(tmp_path / "uninterrupted", *settings)
    ref = torch.load(ref_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ref["global_step"] == 40
    assert final["state_dict"].keys() == ref["state_dict"].keys()
    for key, value in ref["state_dict"].items():  # the network, its EMA and the schedule
        assert torch.equal(final["state_dict"][key], value), key
    for a, b in zip(final["optimizer_states"][0]["state"].values(), ref["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
