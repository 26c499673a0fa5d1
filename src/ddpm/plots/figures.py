"""Saving a figure: rendered once on the Agg canvas, written as a PNG and returned as a tensor.

Every figure in ``ddpm.plots`` is built with matplotlib's object API (``Figure``, no pyplot), so
importing these modules never switches a notebook's backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor


def save_figure(fig: Figure, path: Path) -> Tensor:
    """Render ``fig`` once on the Agg canvas (at ``fig.dpi``), write it as a PNG and return the same
    picture as a (3, H, W) tensor in [0, 1], for the logger."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
