"""One example image for the forward-process figure: the digits, MNIST, a sample photo or a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ddpm.data.pixels import from_uint8
from ddpm.errors import ConfigError


def load_image(image: str, size: int, root: str | None = None) -> Tensor:
    """One image as (C, size, size) in [-1, 1]: ``digits`` (scikit-learn, 8x8 upscaled), ``mnist``
    (from ``root``), ``china`` / ``flower`` (scikit-learn's sample photos) or a file path."""
    if image == "digits":
        from ddpm.data.images import digits

        x = digits()[0][0]  # (1, 8, 8)
    elif image == "mnist":
        from ddpm.data.images import mnist

        if root is None:
            raise ConfigError("--image mnist needs --root DIR holding MNIST/raw")
        x = mnist(root)[0][0]  # (1, 28, 28)
    else:
        if image in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            pil = Image.fromarray(load_sample_image(f"{image}.jpg"))
        elif Path(image).is_file():
            pil = Image.open(image).convert("RGB")
        else:
            raise ConfigError(f"--image {image!r} is not digits, mnist, china, flower or an image file")
        side = min(pil.size)  # the centre square, then resized
        left, top = (pil.width - side) // 2, (pil.height - side) // 2
        pil = pil.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        return from_uint8(np.asarray(pil).copy()).permute(2, 0, 1)  # (3, size, size)
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0].clamp(-1, 1)
