"""Samples of a model as uint8 images, in batches: what FID, KID and IS are measured on.

``generate_shard`` makes the samples independent of the number of processes: sample i belongs to
chunk i // batch_size, each chunk draws all its noise from its own generator seeded from
(seed, chunk index), and a process of a DDP job samples a contiguous block of whole chunks; so the
images with a given index are the same for any world size (and the same batches go through the
network). ``generate_images`` draws every batch from one generator in turn (tests, toy figures).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data.pixels import to_uint8
from ddpm.errors import ConfigError


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """(N,) int64 labels 0, 1, ..., K-1, 0, 1, ...: equal counts per class (the first N % K classes one more)."""
    return torch.arange(num_samples, dtype=torch.long) % num_classes


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a sampling run seeded ``seed``: numpy's ``SeedSequence((seed, chunk))``
    hash as a 64-bit integer, so distinct (seed, chunk) pairs give unrelated streams (no ``seed + chunk``
    overlaps between runs)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not allowed: use an integer >= 0")
    return int(np.random.SeedSequence((int(seed), int(chunk))).generate_state(1, np.uint64)[0])


def shard_chunks(num_samples: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int, int]]:
    """This rank's chunks as (chunk index, first sample index, size): chunk c holds samples
    [c * batch_size, min((c + 1) * batch_size, N)), and rank r takes the r-th of ``world`` contiguous
    blocks of chunks (the first ``num_chunks % world`` ranks one chunk more), so concatenating the
    ranks' samples in rank order gives the samples in index order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    num_chunks = -(-num_samples // batch_size)
    counts = [num_chunks // world + (r < num_chunks % world) for r in range(world)]
    first = sum(counts[:rank])
    return [(c, c * batch_size, min(batch_size, num_samples - c * batch_size)) for c in range(first, first + counts[rank])]


def shard_sizes(num_samples: int, batch_size: int, world: int) -> list[int]:
    """The number of samples of every rank under ``shard_chunks`` (what a gather of their rows needs)."""
    return [sum(size for _, _, size in shard_chunks(num_samples, batch_size, r, world)) for r in range(world)]


def _empty(module) -> np.ndarray:
    c, *hw = getattr(module, "image_shape", module.sample_shape)  # a latent model's samples are decoded images
    return np.zeros((0, *hw, c), np.uint8)


@torch.no_grad()
def generate_shard(
    module,
    num_samples: int,
    batch_size: int,
    seed: int,
    sampler=None,
    labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    rank: int = 0,
    world: int = 1,
    device=None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's part of ``num_samples`` samples from the EMA weights of ``module``: (uint8 images
    (n, H, W, C), their sample indices (n,) int64, ascending and contiguous).

    Chunk c (``shard_chunks``: ``batch_size`` samples, the last one fewer) is one call of
    ``module.sample`` with a generator on ``device`` (None: ``module.device``) seeded
    ``chunk_seed(seed, c)``, so the images of every index are bit-identical for any ``world``
    (given the same device and kernels). ``labels`` (N,): the class of every sample (chunk c gets
    ``labels[c * batch_size:][:size]``), guided at ``guidance_scale`` (None: the module's); None:
    unconditional. ``module`` as for ``generate_images``.
    """
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    device = module.device if device is None else device
    chunks = shard_chunks(num_samples, batch_size, rank, world)
    out = []
    for c, start, size in tqdm(chunks, desc="sampling", disable=not progress):
        generator = torch.Generator(device=device).manual_seed(chunk_seed(seed, c))
        extra = {} if labels is None else {"cond": labels[start : start + size], "guidance_scale": guidance_scale}
        out.append(to_uint8(module.sample(size, generator=generator, use_ema=True, sampler=sampler, **extra)))
    indices = np.concatenate([np.arange(s, s + n) for _, s, n in chunks]) if chunks else np.zeros(0, np.int64)
    return (np.concatenate(out) if out else _empty(module)), indices.astype(np.int64)


@torch.no_grad()
def generate_images(
    module,
    num_samples: int,
    batch_size: int,
    generator: torch.Generator,
    sampler=None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> np.ndarray:
    """``num_samples`` uint8 (N, H, W, C) images from the EMA weights of ``module``, in batches.

    ``module`` is anything with ``sample(n, generator=, use_ema=, sampler=, cond=, guidance_scale=)
    -> (n, C, H, W) in [-1, 1]`` and ``sample_shape`` (C, H, W), e.g. a ``DiffusionModule``; every
    batch draws its x_T and noise from ``generator`` in turn, so the images depend on the seed and
    the batch sizes. ``labels`` (N,): the class of each sample of a conditional model, sampled with
    guidance at ``guidance_scale`` (None: the module's); None: unconditional sampling.
    Evaluation uses ``generate_shard`` (one seed per chunk, the same samples under DDP).
    """
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    batches = [batch_size] * (num_samples // batch_size) + ([num_samples % batch_size] if num_samples % batch_size else [])
    starts = [int(s) for s in np.cumsum([0, *batches])]
    out = []
    for start, b in zip(tqdm(starts[:-1], desc="sampling", disable=not progress), batches):
        extra = {} if labels is None else {"cond": labels[start : start + b], "guidance_scale": guidance_scale}
        out.append(to_uint8(module.sample(b, generator=generator, use_ema=True, sampler=sampler, **extra)))
    return np.concatenate(out) if out else _empty(module)
