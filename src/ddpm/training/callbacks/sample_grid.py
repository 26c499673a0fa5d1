"""The ``SampleGrid`` callback: fixed-seed sample grids from the EMA (and optionally raw) weights."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torchvision.utils import save_image

from ddpm.errors import ConfigError
from ddpm.plots.grid import image_grid
from ddpm.training.callbacks.periodic import PeriodicDrawing, log_image
from ddpm.training.conditioning import check_prompts, class_prompts_of


def with_progress(sampler):
    """A copy of ``sampler`` that shows a progress bar over its steps (samplers take ``progress``)."""
    if not hasattr(sampler, "progress"):
        return sampler
    out = copy.copy(sampler)
    out.progress = True
    return out


class SampleGrid(PeriodicDrawing):
    """Every ``every_n_steps`` optimizer steps and at the end of training, sample a grid with a
    fixed seed and save it as ``<run dir>/samples/step_XXXXXXX.png``; also sent to the logger.
    While the trainer shows a progress bar, sampling shows one too (1,000 DDPM steps take a while).

    Args:
        every_n_steps: steps between grids (0: only at the end).
        num_samples: images per grid.
        seed: the seed of x_T and all sampling noise, the same for every grid.
        compare_raw: put the raw weights' samples beside the EMA's (left: EMA, right: raw),
            from the same noise, to see whether training works before the EMA catches up.
        per_class: for a class-conditional model, the grid has one row per class of this many
            samples (instead of ``num_samples``), drawn with the run's guidance (``conf/guidance``).
        prompts: for a text model, one row per prompt of ``per_class`` samples; None: the data's
            class prompts (e.g. "a handwritten three" for class 3).
    """

    def __init__(self, every_n_steps: int = 1000, num_samples: int = 64, seed: int = 0, compare_raw: bool = False,
                 per_class: int = 8, prompts: list[str] | None = None):
        super().__init__(every_n_steps)
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} is not allowed: use 1 or more")
        if per_class < 1:
            raise ConfigError(f"per_class={per_class!r} is not allowed: use 1 or more")
        self.num_samples, self.per_class = num_samples, per_class
        self.prompts = None if prompts is None else check_prompts(list(prompts))
        self.seed = seed
        self.compare_raw = compare_raw
        self.last_path: Path | None = None

    def draw(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        bar = trainer.progress_bar_callback
        sampler = with_progress(pl_module.sampler) if getattr(bar, "is_enabled", False) else None
        grids = []
        labels = self.row_conditions(trainer, pl_module)
        n, nrow = (self.num_samples, None) if labels is None else (len(labels), self.per_class)
        for use_ema in (True, False) if self.compare_raw else (True,):
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            images = pl_module.sample(n, generator=generator, use_ema=use_ema, sampler=sampler, cond=labels)
            grids.append(image_grid(images, nrow=nrow))
        grid = torch.cat(grids, dim=-1) if len(grids) > 1 else grids[0]  # (C, H, W)
        out = Path(trainer.default_root_dir) / "samples" / f"step_{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out)
        self.last_path = out
        log_image(trainer, "samples/ema_vs_raw" if self.compare_raw else "samples/ema", grid, step)

    def row_conditions(self, trainer: L.Trainer, pl_module):
        """None (unconditional), or per row k, per_class copies of class k's label or of the k-th prompt,
        drawn at the configured guidance scale."""
        conditioning = pl_module.conditioning
        prompts = self.prompts or class_prompts_of(getattr(trainer, "datamodule", None))
        count = conditioning.class_count(prompts)
        if count is None and conditioning.needs_class_prompts:
            raise ConfigError("callbacks.sample_grid.prompts=null and the data has no class prompts: give the "
                              "grid's prompts, e.g. callbacks.sample_grid.prompts=['a handwritten three']")
        return None if count is None else conditioning.for_labels(torch.arange(count).repeat_interleave(self.per_class),
                                                                  prompts)
