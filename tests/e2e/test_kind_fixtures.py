"""Runs of every kind written by the code of commit bb9fe6c (unconditional, class-conditional, text,
autoencoder, latent) still load, and draw what that code drew from them (tests/data/kinds/README.md)."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from support.runs import DATA

KINDS_DIR = DATA / "kinds"  # see its README.md
KINDS = ["unconditional", "class", "text", "autoencoder", "latent"]

# The script that wrote expected.npz with the old code: the same loading and sampling calls, run here with today's.
_spec = importlib.util.spec_from_file_location("kind_fixtures_make_expected", KINDS_DIR / "make_expected.py")
make_expected = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_expected)

pytestmark = pytest.mark.usefixtures("one_thread")

# expected.npz holds float32 arrays computed on another machine (possibly another CPU, BLAS and thread
# count): summation order may differ, a few ulp per operation, carried through 5 DDIM steps or the
# autoencoder's layers; values are O(1), so 1e-5 is ~100 float32 ulp of 1, and never bit-exactness. A
# wrong load moves them far more: scaling every weight by 1.001 moves the samples by 2e-4 (latent) to
# 4e-3 (class), and the condition moves them by 0.07 (text) and 0.18 (class) against the unconditional ones.
ATOL = 1e-5


def run_dir_of(kind: str, tmp_path: Path) -> Path:
    """A copy of the fixture's run directory in tmp_path (loading never touches the repository's copy); for the
    latent run, with module.autoencoder_ckpt pointing at a copy of the autoencoder fixture (the run recorded the
    absolute path of the machine it was trained on)."""
    if kind != "latent":
        return Path(shutil.copytree(KINDS_DIR / kind, tmp_path / kind, ignore=shutil.ignore_patterns("expected.npz")))
    autoencoder = shutil.copytree(KINDS_DIR / "autoencoder", tmp_path / "autoencoder",
                                  ignore=shutil.ignore_patterns("expected.npz"))
    return make_expected.with_autoencoder(KINDS_DIR / "latent", Path(autoencoder) / "checkpoints" / "last.ckpt",
                                          tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_of_each_kind_written_by_bb9fe6c_loads_and_draws_what_it_drew(kind, tmp_path):
    expected = np.load(KINDS_DIR / kind / "expected.npz")
    got = make_expected.draw(kind, run_dir_of(kind, tmp_path))
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=0, err_msg=f"{kind}: {name}")
