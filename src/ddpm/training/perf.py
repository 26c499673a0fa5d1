"""Performance accounting: FLOPs of a network call and the device's measured matmul peak (for MFU)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(net: nn.Module, sample_shape: Sequence[int], device: torch.device | str | None = None) -> int:
    """FLOPs of one forward pass of ``net(x, t)`` on one image (matmuls, convolutions, attention).

    Counted by torch's ``FlopCounterMode`` (2 FLOPs per multiply-add); elementwise ops, norms and
    activations are not counted, as in the usual MFU convention (PaLM, Appendix B). Calls
    ``net.forward`` directly, so a compiled network is counted without compiling a new graph.
    A training step costs three times this (forward, and twice for the backward).
    """
    device = device or next(net.parameters()).device
    x = torch.zeros((1, *sample_shape), device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    # the math attention kernel: the counter has no formula for the CPU flash kernel, and would drop
    # attention's matmuls (~10% of a DiT-S/2's FLOPs); the count is the same for every kernel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        net.forward(x, t)
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, size: int = 8192,
                      seconds: float = 1.0) -> float:
    """Measured FLOP/s of a square ``size`` matmul in ``dtype`` on ``device``: the denominator of MFU.

    Measured rather than taken from the data sheet, so MFU says how much of what this card really
    reaches on dense matmuls the network gets (the data-sheet peak is often not reachable).
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up (kernel selection)
    sync()
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            a @ b
        n += 10
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * n / elapsed
