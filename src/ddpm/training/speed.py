"""The speed switches of training and sampling, and the one place where ``"auto"`` is resolved."""

from __future__ import annotations

import torch

from ddpm.errors import check_choice

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_speed_options(channels_last, compile) -> tuple[bool | str, str | None]:
    """Validated ``channels_last`` (true, false, auto) and ``compile`` (a mode, auto, or none/false; true = default)."""
    if compile is True:
        compile = "default"
    return (
        check_choice("channels_last", channels_last, (True, False, "auto")),
        check_choice("compile", compile or None, (None, "auto", *COMPILE_MODES)),
    )


def resolve_speed(channels_last, compile, device: torch.device | str) -> tuple[bool, str | None]:
    """(channels_last, compile mode or None) on ``device``: ``"auto"`` turns each on for CUDA devices only."""
    channels_last, compile = check_speed_options(channels_last, compile)
    on_gpu = torch.device(device).type == "cuda"
    return (
        on_gpu if channels_last == "auto" else channels_last,
        ("default" if on_gpu else None) if compile == "auto" else compile,
    )
