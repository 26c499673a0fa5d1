"""Shared helpers: run the real entry points in a subprocess or in this process, compose the real config;
and what keeps tests apart when pytest-xdist runs them in several worker processes at once."""

import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (README's `-n 2` on a 2-core machine) each worker, and every process a test starts
# (train.py, evaluate.py, DDP ranks), computes on one CPU thread: two workers with two threads each
# only contend for the cores. Set before torch is first imported (the variables are read then), and
# set again in case a plugin imported it earlier. No test depends on the thread count: the ones that
# compare numbers across processes set one thread themselves.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): a second
    thread only adds contention on the shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_caches(tmp_path_factory):
    """The dataset-classifier and FID-reference caches of this test process (each xdist worker has its
    own temporary folder): a test that does not name a cache directory never reads a user's
    ``~/.cache/ddpm`` nor races another worker writing the same file there."""
    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_CLASSIFIER_CACHE", str(root / "classifier"))
        mp.setenv("DDPM_FID_CACHE", str(root / "fid"))
        yield root


def run_here(script: str, *argv: str, monkeypatch, capfd) -> tuple[int, str, str]:
    """``python <script> argv`` in this process: the real entry point run by ``runpy`` with ``sys.argv``
    set, which is what the script does after its imports (tests/test_bad_input.py checks that exit code
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
