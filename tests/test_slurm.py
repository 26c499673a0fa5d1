"""`python train.py -m hydra/launcher=slurm` on a real SLURM cluster (scripts/slurm_cluster.sh starts a
one-node one here): submitted through hydra-submitit-launcher, run by srun, finished, checkpoint written."""

import shutil
import subprocess

import pytest
import torch
from conftest import TINY, run_script

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


def test_one_task_trains_and_checkpoints(tmp_path):
    log, run_dir = submit(tmp_path / "sweep")
    assert "JobEnvironment(job_id=" in log and "global_rank=0(1)" in log  # run under SLURM, one task
    assert "SLURM auto-requeueing enabled" in log  # Lightning's SLURMEnvironment owns requeue
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert (run_dir / "config.yaml").is_file()


def test_two_tasks_run_ddp_over_gloo(tmp_path):
    log, run_dir = submit(
        tmp_path / "sweep", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=32-true", "trainer.benchmark=false",
    )
    # SLURM started both processes (tasks_per_node came from trainer.devices); Lightning joined them
    assert "global_rank=0(2)" in log and "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["ema.n_averaged"].item() == 2
