"""Shared helpers: run the real entry points in a subprocess, compose the real config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# A run small enough for CI: the tiny U-Net on the 8x8 digits, 20 diffusion steps.
TINY = [
    "model=unet_tiny",
    "schedule.num_timesteps=20",
    "data.batch_size=16",
    "module.warmup_steps=2",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=2",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.progress_bar.refresh_rate=0",
]


def run_script(
    script: str, *overrides: str, check: bool = True, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python <script> overrides...`` from the repo root (``env``: variables to add or replace);
    fail with its output if it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, script, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(overrides)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_train(run_dir: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return run_script("train.py", *TINY, f"hydra.run.dir={run_dir}", *overrides, **kwargs)


def compose_train(*overrides: str, tmp_path: Path, return_hydra_config: bool = False):
    """The composed ``conf/train.yaml`` with ``overrides``, its run directory ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=return_hydra_config)
