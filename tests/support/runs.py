"""Run the real entry points in a subprocess or in this process, compose the real config; the paths
the tests name (the repository, its conf/, tests/data/, the shared data)."""

import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # tests/support/runs.py -> the repository
TESTS = ROOT / "tests"
DATA = TESTS / "data"  # the committed fixtures: legacy_run, kinds (see their README.md)
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# A run small enough for CI: the tiny U-Net on the 8x8 digits, 20 diffusion steps.
TINY = [
    "model=unet_tiny",
    "schedule.num_timesteps=20",
    "data.batch_size=16",
    "lr_schedule.warmup_steps=2",
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

    import ddpm.runs.resolvers  # noqa: F401  (the config's ${ddpm.eq:...}, registered as train.py does)

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides], return_hydra_config=return_hydra_config)


def run_here(script: str, *argv: str, monkeypatch, capfd) -> tuple[int, str, str]:
    """``python <script> argv`` in this process: the real entry point run by ``runpy`` with ``sys.argv``
    set, which is what the script does after its imports (tests/e2e/test_bad_input.py checks that exit code
    and stderr match a real process); (exit code, stdout, stderr). Leaves logging, Hydra, the seed
    variables and torch's thread count as it found them."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *argv])
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(key, raising=False)  # seed_everything sets them
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threads = torch.get_num_threads()  # experiment=toy_* sets one thread for its run
    capfd.readouterr()
    code = 0
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    finally:
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    return code, out, err
