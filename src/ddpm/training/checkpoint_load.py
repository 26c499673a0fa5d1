"""Reading a checkpoint a user names: tensors and plain containers only, never unpickled code.

``torch.load(weights_only=True)`` refuses any pickle that would import or call something other than
tensor rebuilders and plain containers, so a crafted file cannot run code. Both readers of a user's
checkpoint use this: ``ddpm.runs.load.load_run`` (evaluation) and the resume in ``trainer.fit``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from ddpm.errors import ConfigError


def refusal(error: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words (torch's message is a page)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found or "Weights only load failed" in str(error):
        what = found[1] if found else "an object"
        return f"it holds {what}, not only tensors and plain containers; nothing in it was run"
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint at ``path`` (a dict with a ``state_dict``), read with ``weights_only=True``.

    A file that is not a torch file, holds anything but tensors and plain containers, or has no
    ``state_dict`` is a ConfigError of one line naming it and the reason.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors and plain containers
        raise ConfigError(f"ckpt_path='{path}' cannot be read as a checkpoint ({refusal(e)})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path='{path}' cannot be read as a checkpoint: it holds no state_dict")
    return checkpoint
