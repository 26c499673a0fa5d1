"""The ``Reconstructions`` callback of an autoencoder run: originals beside reconstructions, and val/psnr."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchvision.utils import save_image

from ddpm.data.images import DataError
from ddpm.errors import ConfigError
from ddpm.evaluation.reconstruction import psnr
from ddpm.plots.grid import image_grid
from ddpm.training.callbacks.periodic import PeriodicDrawing, log_image


def held_out_images(datamodule, count: int) -> tuple[Tensor, str]:
    """(the first ``count`` images (N, C, H, W) in [-1, 1] of the data's test split, "val"), or of its
    training split, "train", when it has none (the digits without ``data.dataset.test_images``)."""
    try:
        dataset, split = datamodule.test_dataset(), "val"
    except DataError:
        datamodule.setup("fit")
        dataset, split = datamodule.dataset, "train"
    count = min(count, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)]), split


class Reconstructions(PeriodicDrawing):
    """Every ``every_n_steps`` optimizer steps and at the end of training: PSNR (dB) of the reconstructions
    (decoded posterior means) of ``num_images`` held-out images, logged as ``val/psnr`` (``train/psnr``
    on training images when the data has no test split), and a grid of ``num_shown`` of them,
    originals on the left and reconstructions on the right, as
    ``<run dir>/samples/reconstructions_step_XXXXXXX.png``.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 1000, num_shown: int = 32, batch_size: int = 250):
        super().__init__(every_n_steps)
        if num_images < 1 or num_shown < 1 or batch_size < 1:
            raise ConfigError(f"callbacks.reconstructions num_images={num_images!r}, num_shown={num_shown!r}, "
                              f"batch_size={batch_size!r}: use 1 or more of each")
        self.num_images, self.num_shown, self.batch_size = num_images, num_shown, batch_size
        self._images: Tensor | None = None
        self.last_path: Path | None = None
        self.last_psnr: float | None = None

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if not hasattr(pl_module, "reconstruct"):
            raise ConfigError(f"callbacks.reconstructions draws an autoencoder's reconstructions, but this run trains "
                              f"{type(pl_module).__name__}: use it with task=autoencoder (e.g. experiment=autoencoder_mnist)")

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        if self._images is None:
            self._images, self._split = held_out_images(trainer.datamodule, self.num_images)
        rec = torch.cat([pl_module.reconstruct(b).cpu() for b in self._images.split(self.batch_size)])  # (N, C, H, W)
        step = trainer.global_step
        key = f"{self._split}/psnr"
        self.last_psnr = float(psnr(self._images, rec).mean())
        for logger in trainer.loggers:
            logger.log_metrics({key: self.last_psnr}, step=step)
        rank_zero_info(f"step {step}: {key} {self.last_psnr:.2f} dB on {len(rec)} "
                       f"{'held-out' if self._split == 'val' else 'training'} images")
        shown = min(self.num_shown, len(rec))
        grid = torch.cat([image_grid(self._images[:shown], nrow=4), image_grid(rec[:shown], nrow=4)], dim=-1)
        out = Path(trainer.default_root_dir) / "samples" / f"reconstructions_step_{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out)
        self.last_path = out
        log_image(trainer, "samples/reconstructions", grid, step)
