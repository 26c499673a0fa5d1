"""Set torch's CPU threads for a run (a tiny model on a small machine)."""

from __future__ import annotations

import lightning as L
import torch

from ddpm.errors import ConfigError


class CPUThreads(L.Callback):
    """Set torch's intra-op CPU threads when fitting starts.

    A 2-D MLP on batches of 1,024 points gains nothing from a second thread; on a busy 2-core
    machine two threads made ``experiment=toy_spiral`` five times slower than one.
    """

    def __init__(self, num_threads: int = 1):
        if num_threads < 1:
            raise ConfigError(f"num_threads={num_threads!r} is not allowed: use 1 or more")
        self.num_threads = num_threads

    def setup(self, trainer, pl_module, stage: str) -> None:
        torch.set_num_threads(self.num_threads)
