"""The noise of a training step, seeded from (run seed, rank, optimizer step): nothing to checkpoint.

Per rank, so DDP ranks never draw the same t and eps although ``seed_everything`` gave them one seed;
per step, so a run resumed at any step draws the noise of the uninterrupted run with no generator
state to checkpoint. Host ints only: no device sync.
"""

from __future__ import annotations

import hashlib

import torch


def step_seed(run_seed: int, rank: int, step: int, stream: str = "") -> int:
    """A 63-bit seed of (run seed, rank, optimizer step), one per named ``stream`` (blake2b of the key)."""
    key = f"{run_seed}/{rank}/{step}".encode() + (f"/{stream}".encode() if stream else b"")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 2**63


def seed_step(generator: torch.Generator, run_seed: int, rank: int, step: int, global_generators: bool = True) -> None:
    """Seed ``generator`` (t, eps, dropped conditions, posterior samples) and, with ``global_generators``,
    torch's global generators (CPU, and each GPU's default one: what else the step draws, such as dropout
    masks) for optimizer step ``step`` of ``rank``. Micro-batches of one step (gradient accumulation)
    continue the streams."""
    generator.manual_seed(step_seed(run_seed, rank, step))
    if global_generators:
        torch.manual_seed(step_seed(run_seed, rank, step, "global"))
