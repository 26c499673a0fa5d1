"""The Inception-v3 features of FID, KID and IS, and running a feature extractor over uint8 images.

Features come from the 2015-12-05 TensorFlow Inception-v3 of the FID paper (Heusel et al. 2017)
through torch-fidelity's ``FeatureExtractorInceptionV3`` (TF1-compatible bilinear resize to
299x299, 2048-d pool3, 1008 logits): the features torch-fidelity, pytorch-fid and TTUR use. The
weights are never downloaded here: they are found by ``inception_weights_path``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm.errors import ConfigError
from ddpm.evaluation.npz import check_images

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download name
Extractor = Callable[[Tensor], dict]  # uint8 (N, 3, H, W) -> {"pool3": (N, D), "logits": (N, K) or None}


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else $DDPM_INCEPTION_WEIGHTS, else torch-fidelity's cache."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"inception_weights='{path}' does not exist: point it at torch-fidelity's {INCEPTION_FILE}")
        return path
    candidates = [os.environ.get("DDPM_INCEPTION_WEIGHTS"), Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    raise ConfigError(
        f"no Inception weights found (nothing is downloaded): set inception_weights=FILE or the environment variable "
        f"DDPM_INCEPTION_WEIGHTS to torch-fidelity's {INCEPTION_FILE}, or put that file in {candidates[1].parent}"
    )


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The Inception weights at ``path`` as a state dict of tensors, read with ``weights_only=True``.

    Anything else (a pickle of other objects, a file that is not torch's, a dict holding non-tensors)
    is a ConfigError naming the file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors and plain containers
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # torch's message is a page
        reason = f"it holds {found[1]}" if found else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise ConfigError(f"inception_weights='{path}' cannot be read as a state dict ({reason})") from e
    bad = next((k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))), None) \
        if isinstance(state, dict) else type(state).__name__
    if bad is not None or not state:
        raise ConfigError(f"inception_weights='{path}' is not a state dict of tensors "
                          f"(found {bad!r}): point it at torch-fidelity's {INCEPTION_FILE}")
    return {k: v.as_subclass(Tensor) for k, v in state.items()}


class InceptionFeatures(nn.Module):
    """uint8 (N, 3, H, W) -> {"pool3": (N, 2048), "logits": (N, 1008) or None}, never in train mode.

    ``logits`` is None when the weights hold no classifier (an ``fc`` of NaN, as in pool3-only
    files); ``no_logits_reason`` then says why the Inception Score is missing.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = inception_weights_path(weights_path)
        # torch-fidelity unpickles its weights file with weights_only=False: it is handed only bytes
        # written here from the state dict checked above, never the user's file
        checked = io.BytesIO()
        torch.save(load_inception_state_dict(self.weights_path), checked)
        checked.seek(0)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=checked
            )
        except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
            reason = " ".join(str(e).split())[:300]
            raise ConfigError(f"inception_weights='{self.weights_path}' is not the Inception-v3 of "
                              f"torch-fidelity's {INCEPTION_FILE} ({reason})") from e
        self.has_classifier = bool(torch.isfinite(self.net.fc.weight).all())
        self.no_logits_reason = None if self.has_classifier else (
            f"the Inception weights '{self.weights_path}' have no classifier layer (fc is NaN); "
            f"the Inception Score needs the full {INCEPTION_FILE}"
        )

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict:
        pool3, logits = self.net(images)
        return {"pool3": pool3, "logits": logits if self.has_classifier else None}


@torch.no_grad()
def extract_features(
    images: np.ndarray, extractor: Extractor, batch_size: int = 100, device: str | torch.device = "cpu", progress: bool = False
) -> dict:
    """{"pool3": (N, D) float64, "logits": (N, K) float64 or None} of uint8 (N, H, W, C) images;
    grayscale is replicated to three channels."""
    images = check_images(images)
    pool3, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="inception", disable=not progress):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2)  # (B, C, H, W)
        out = extractor(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)  # grayscale -> RGB
        pool3.append(out["pool3"].double().cpu())
        logits.append(None if out.get("logits") is None else out["logits"].double().cpu())
    return {
        "pool3": torch.cat(pool3).numpy() if pool3 else np.zeros((0, 0)),
        "logits": None if not logits or logits[0] is None else torch.cat(logits).numpy(),
    }
