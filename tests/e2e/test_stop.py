"""A stop must save: SIGTERM and SIGINT to a real `python train.py` write last.ckpt at the stop step,
exit 128 + signal, and the run resumes from there."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from support.runs import ROOT, TINY, compose_train


def start_train(run_dir, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *TINY, f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(path, proc, timeout=300.0) -> None:  # generous: a loaded machine starts Python slowly
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited {proc.returncode} before {path} appeared\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_at_the_stop_step_exits_nonzero_and_resumes(tmp_path, signum, code):
    run_dir = tmp_path / "run"
    # A grid every 2 steps tells the test training is under way; periodic checkpoints are far off,
    # so any last.ckpt is the one the stop wrote.
    proc = start_train(run_dir, "trainer.max_steps=5000", "callbacks.sample_grid.every_n_steps=2",
                       "callbacks.checkpoint.every_n_train_steps=4000")
    wait_for(run_dir / "samples" / "step_0000002.png", proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= step < 5000
    assert f"{signal.Signals(signum).name} at step {step}: saved {last}" in out
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind

    if signum == signal.SIGINT:
        return  # the resume is the same for both signals: checked once, after SIGTERM
    # resumed into its own directory, the run keeps writing last.ckpt (not last-v1.ckpt beside a stale one);
    # in this process: the resume needs no signal
    from ddpm.runs.train import train

    train(compose_train(*TINY, f"ckpt_path={last}", f"trainer.max_steps={step + 2}", "callbacks.sample_grid=null",
                        tmp_path=run_dir))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step + 2
    assert not list(last.parent.glob("last-v*.ckpt"))
