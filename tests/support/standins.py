"""A fast stand-in for the Inception network, for the FID tests (test_metrics.py checks the real one)."""

import torch
import torch.nn.functional as F


class StandIn(torch.nn.Module):
    """A fast stand-in for Inception: 16 features from 4x4 average pooling; optional fixed logits."""

    def __init__(self, logits=None):
        super().__init__()
        self.logits, self.calls = logits, 0

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        self.calls += len(x)
        pool = F.adaptive_avg_pool2d(x.double() / 255, 4)  # (N, 3, 4, 4), in [0, 1] like pool3 features
        features = pool[:, 0].flatten(1) + 0.1 * pool[:, 1:].flatten(1).mean(1, keepdim=True)
        logits = None if self.logits is None else self.logits[self.calls - len(x) : self.calls]
        return {"pool3": features, "logits": logits}


def mnist_format_root(root, num_train: int = 200, num_test: int = 50, seed: int = 0):
    """A data root holding ``MNIST/raw`` in torchvision's layout (gzipped idx files) with random
    28x28 digits-shaped images and labels: what ``data=mnist`` reads, made here so that the
    evaluation tests run on a clone without ``../shared``. Returns ``root``."""
    import gzip
    import struct
    from pathlib import Path

    import numpy as np

    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for split, n in (("train", num_train), ("t10k", num_test)):
        images = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.randint(0, 10, n).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
            header = struct.pack(f">I{array.ndim}I", magic, *array.shape)  # idx: magic, then the sizes
            with gzip.open(raw / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return Path(root)
