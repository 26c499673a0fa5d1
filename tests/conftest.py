"""Fixtures for every test, and what keeps tests apart when pytest-xdist runs them in several worker
processes at once. Helpers the tests import live in the ``support`` package (tests/support/)."""

import os

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
