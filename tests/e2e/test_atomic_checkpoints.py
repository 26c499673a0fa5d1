"""Checkpoints are atomic in real runs: training processes killed (SIGKILL) while they save leave every
checkpoint loadable and no temp file, and train.py resumes from the previous checkpoint when last.ckpt is
damaged. The units (AtomicCheckpointIO, newest_complete, resolve_resume): unit/training/test_checkpoint_io.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.runs import ROOT, TINY, compose_train, run_here


# Runs in a subprocess: forks training processes from one warm interpreter (no 15 s of imports per
# trial), kills each with SIGKILL while it writes a checkpoint (it saves every step), resumes
# from last.ckpt in the next trial, and ends with one restart that runs to completion.
KILLER = r"""
import json, os, random, signal, sys, time, traceback
from pathlib import Path
sys.path.insert(0, "tests")
from support.runs import TINY, compose_train
from ddpm.runs.train import train

run_dir, trials = Path(sys.argv[1]), int(sys.argv[2])
random.seed(int(sys.argv[3]))
last = run_dir / "checkpoints" / "last.ckpt"

def fork_train(max_steps):
    resume = [f"ckpt_path={last}"] if last.exists() else []
    cfg = compose_train(*TINY, "callbacks.sample_grid=null", "logger=none", "callbacks.checkpoint.every_n_train_steps=1",
                        "+callbacks.checkpoint.monitor=step", "+callbacks.checkpoint.mode=max",
                        "callbacks.checkpoint.save_top_k=2", f"trainer.max_steps={max_steps}", *resume, tmp_path=run_dir)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            train(cfg)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid

orphans, failures = 0, []
for trial in range(trials):
    started = time.time()
    pid = fork_train(100_000)
    while not (last.exists() and last.stat().st_mtime > started):  # this trial has saved once
        if os.waitpid(pid, os.WNOHANG)[0]:
            failures.append(f"trial {trial} exited before killed"); break
        time.sleep(0.02)
    else:
        time.sleep(random.uniform(0.0, 0.5))
        deadline = time.time() + 2.0
        while not any(last.parent.glob(".*.partial")) and time.time() < deadline:  # kill inside a save
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    orphans += len(list(last.parent.glob(".*.partial")))
import torch
pid = fork_train(torch.load(last, weights_only=True)["global_step"] + 1)  # the restart: one more step
status = os.waitpid(pid, 0)[1]
if status:
    failures.append(f"restart exited with status {status}")
print(json.dumps({"orphans_after_kills": orphans, "failures": failures}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("tmpdir_layout", ["same filesystem", "tmpfs"])
def test_sigkill_during_saves_leaves_every_checkpoint_loadable(tmp_path, tmpdir_layout):
    if tmpdir_layout == "tmpfs" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    tmpdir = tmp_path / "tmp" if tmpdir_layout == "same filesystem" else Path("/dev/shm")
    tmpdir.mkdir(exist_ok=True)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(run_dir), "5", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failures"] == [], proc.stderr[-3000:]
    assert result["orphans_after_kills"] >= 3  # most kills landed while a checkpoint was being written
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert [p.name for p in ckpts if not p.name.endswith(".ckpt")] == []  # no orphan temp files
    assert "last.ckpt" in {p.name for p in ckpts}
    for p in ckpts:
        assert isinstance(torch.load(p, map_location="cpu", weights_only=True)["global_step"], int), p
    print(tmpdir_layout, result, [p.name for p in ckpts])


def test_train_resumes_from_the_previous_checkpoint_when_last_is_truncated(tmp_path, monkeypatch, capfd):
    from ddpm.runs.train import train

    first = tmp_path / "first"  # trained in this process; the resume through train.py's main (support.runs.run_here)
    train(compose_train(*TINY, "trainer.max_steps=5", "callbacks.checkpoint.every_n_train_steps=2",
                        "callbacks.sample_grid=null", tmp_path=first))
    last = first / "checkpoints" / "last.ckpt"
    # max_steps not a multiple of every_n_train_steps: last.ckpt still holds the final step
    assert torch.load(last, weights_only=True)["global_step"] == 5
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a save cut short
    resumed = tmp_path / "resumed"
    code, _, err = run_here("train.py", *TINY, f"hydra.run.dir={resumed}", f"ckpt_path={last}", "trainer.max_steps=6",
                            "callbacks.sample_grid=null", monkeypatch=monkeypatch, capfd=capfd)
    fallback = first / "checkpoints" / "step_0000004.ckpt"
    assert code == 0 and f"is damaged (not a complete checkpoint); resuming from {fallback}" in err, err[-3000:]
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
