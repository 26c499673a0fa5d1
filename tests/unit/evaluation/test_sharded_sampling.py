"""World-size-invariant sampling (ddpm.evaluation.sampling): samples are drawn in chunks of fixed seeds,
split across ranks in whole chunks, so the images do not depend on the number of processes (the real
2-process jobs: e2e/test_ddp_eval.py)."""

import numpy as np
import pytest
import torch

from ddpm.data.pixels import to_uint8
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.sampling import balanced_labels, chunk_seed, generate_shard, shard_chunks, shard_sizes
from ddpm.runs.build import build_module
from support.runs import compose_train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the module


def test_shard_chunks_are_contiguous_blocks_of_whole_chunks():
    # 7 samples in chunks of 3: [0, 3), [3, 6), [6, 7); 2 ranks: chunks {0, 1} and {2}; 4 ranks: one idle
    assert shard_chunks(7, 3) == [(0, 0, 3), (1, 3, 3), (2, 6, 1)]
    assert [shard_chunks(7, 3, r, 2) for r in range(2)] == [[(0, 0, 3), (1, 3, 3)], [(2, 6, 1)]]
    assert [shard_chunks(7, 3, r, 4) for r in range(4)] == [[(0, 0, 3)], [(1, 3, 3)], [(2, 6, 1)], []]
    assert shard_sizes(7, 3, 2) == [6, 1] and shard_sizes(7, 3, 4) == [3, 3, 1, 0]
    assert chunk_seed(0, 1) != chunk_seed(1, 0) and chunk_seed(5, 2) == chunk_seed(5, 2)
    with pytest.raises(ConfigError, match="seed=-1 is not allowed"):
        chunk_seed(-1, 0)


def test_sharded_samples_are_the_same_for_one_and_two_and_three_ranks(tmp_path):
    cfg = compose_train("model=unet_tiny", "schedule.num_timesteps=20", "conditioning=class",
                        tmp_path=tmp_path)
    module = build_module(cfg)
    with torch.no_grad():
        for p in module.ema.module.parameters():  # the EMA's zero output layer would make the net silent
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    labels, sampler = balanced_labels(7, 10), DDIMSampler(3, eta=0.5)  # eta > 0: noise at every step too
    one, index = generate_shard(module, 7, 3, 11, sampler, labels)
    assert one.shape == (7, 8, 8, 1) and one.dtype == np.uint8 and index.tolist() == list(range(7))
    # by hand: chunk c is one call with a generator seeded chunk_seed(11, c) and the labels of its indices
    by_hand = [module.sample(n, torch.Generator().manual_seed(chunk_seed(11, c)), sampler=sampler,
                             cond=labels[s : s + n]) for c, s, n in ((0, 0, 3), (1, 3, 3), (2, 6, 1))]
    assert np.array_equal(one, to_uint8(torch.cat(by_hand)))
    for world in (2, 3):
        parts = [generate_shard(module, 7, 3, 11, sampler, labels, rank=r, world=world) for r in range(world)]
        assert np.array_equal(np.concatenate([p[1] for p in parts]), index)  # rank order is sample order
        assert np.array_equal(np.concatenate([p[0] for p in parts]), one)  # bit-identical images
    assert not np.array_equal(generate_shard(module, 7, 3, 12, sampler, labels)[0], one)  # the seed matters
