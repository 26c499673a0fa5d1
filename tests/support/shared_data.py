"""The shared data tests may read (``../shared/data``, see its README.md), skipped with a reason where
it is absent: a user's clone has no ``../shared``."""

from pathlib import Path

import pytest

from support import runs

MNIST = ("MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz",
         "MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz")
INCEPTION_WEIGHTS = "inception/weights-inception-2015-12-05-pool3.pth"


def require(*files: str) -> Path:
    """The shared data root (``support.runs.SHARED_DATA``, read at the call, not at import), after skipping
    the calling test or fixture with a reason when any of ``files`` (relative to it) is absent."""
    root = runs.SHARED_DATA
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        pytest.skip(f"needs {missing[0]}{more} under {root} (see its README.md; a clone has no ../shared)")
    return root
