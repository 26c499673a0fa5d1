"""FID during training: every N steps, K samples from the EMA weights against the training set."""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ddpm.diffusion.process_sampler import sampler_for
from ddpm.evaluation.distances import frechet_distance
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, InceptionFeatures, extract_features
from ddpm.evaluation.reference import Shard, reference_from_file, reference_statistics
from ddpm.evaluation.sampling import generate_shard, shard_sizes
from ddpm.training.conditioning import class_prompts_of
from ddpm.training.callbacks.periodic import EveryNSteps, check_sampled_evaluation


def fid_name(num_samples: int) -> str:
    """``val/fid_5k`` for 5000 samples, ``val/fid_500`` for 500: the count is part of the name."""
    return f"val/fid_{num_samples // 1000}k" if num_samples % 1000 == 0 else f"val/fid_{num_samples}"


def lightning_shard(trainer: L.Trainer, pl_module: L.LightningModule) -> Shard:
    """This rank's ``Shard``: sums and row gathers through the trainer's strategy (DDP included)."""
    device = pl_module.device

    def all_sum(t: Tensor) -> Tensor:
        return trainer.strategy.reduce(t.to(device), reduce_op="sum") if trainer.world_size > 1 else t

    def gather_rows(t: Tensor, counts: list[int]) -> Tensor:
        if trainer.world_size == 1:
            return t
        padded = t.new_zeros(max(max(counts), 1), *t.shape[1:])  # all_gather needs one shape on every rank
        padded[: len(t)] = t
        gathered = pl_module.all_gather(padded.to(device))  # (world, max, ...)
        return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])

    return Shard(trainer.global_rank, trainer.world_size, all_sum, gather_rows)


def blank_image(pl_module) -> np.ndarray:
    """One black uint8 (1, H, W, C) image of the module's sample shape (C, H, W)."""
    c, h, w = getattr(pl_module, "image_shape", pl_module.sample_shape)  # a latent model's samples are decoded images
    return np.zeros((1, h, w, c), np.uint8)


class FIDCallback(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps (and not at the end of training unless it falls on one),
    the FID of ``num_samples`` EMA samples, logged as ``val/fid_5k`` (the sample count in the name)
    to every logger and published with ``pl_module.log`` (for ``ModelCheckpoint(monitor="val/fid_5k")``).

    The samples are those of one process for any number of processes (``generate_shard``: a seed
    per chunk of ``batch_size``): under DDP each rank samples and featurizes its contiguous block of
    chunks, the features are gathered once in sample order, and every rank computes the same number,
    bit-equal to one process's on the same weights and reference; rank 0's loggers write it. The
    reference statistics are computed once from the datamodule's training images (split over the
    ranks, whose moment sums equal one process's to float64 rounding, ~1e-16), or read from
    ``reference_path``, and cached like ``evaluate.py``'s. Each evaluation also logs its duration as
    ``val/fid_5k_seconds``.

    Args:
        every_n_steps: steps between evaluations.
        num_samples: K, the number of samples (the community figure is 50k; small K biases FID up).
        batch_size: sampling and Inception batch size; the samples come in chunks of it, one seed each.
        sampler: the sampler to use (e.g. a DDIMSampler for speed); None: the module's own.
        seed: seed of the samples, the same at every evaluation, so changes come from the model.
        inception_weights: the Inception weights file (see ``ddpm.evaluation.inception.inception_weights_path``).
        reference_path: an .npz of uint8 images or of mu/sigma; None: the training set.
        reference_count: training images for the reference (None: all).
        cache_dir: where reference statistics are cached (None: not cached).
        feature_extractor: stands in for the Inception network (tests); built lazily when None.
    """

    def __init__(
        self,
        every_n_steps: int = 5000,
        num_samples: int = 5000,
        batch_size: int = 250,
        sampler=None,
        seed: int = 0,
        inception_weights: str | None = None,
        reference_path: str | None = None,
        reference_count: int | None = None,
        cache_dir: str | None = None,
        feature_extractor: Extractor | None = None,
    ):
        check_sampled_evaluation(every_n_steps, num_samples, batch_size, seed)
        super().__init__(every_n_steps)
        self.num_samples, self.batch_size = num_samples, batch_size
        self.sampler, self.seed = sampler, seed
        self.inception_weights, self.reference_path = inception_weights, reference_path
        self.reference_count, self.cache_dir = reference_count, cache_dir
        self.extractor = feature_extractor
        self.reference: FeatureStats | None = None
        self.name = fid_name(num_samples)
        self.last: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.sampler = sampler_for(self.sampler, pl_module.process, pl_module.sampler)  # off VP: the run's, not DDIM
        if self.extractor is None:  # fail at the start, not hours in, when the weights are missing
            self.extractor = InceptionFeatures(self.inception_weights)

    def run(self, trainer, pl_module) -> None:
        """Evaluate, then send the FID and its seconds to the loggers and the other callbacks."""
        start = time.perf_counter()
        fid = self.evaluate(trainer, pl_module)
        metrics = {self.name: fid, f"{self.name}_seconds": time.perf_counter() - start}
        # Lightning sends what pl_module.log collects to the loggers only on its logging steps
        # (every log_every_n_steps), so the loggers get the numbers here, at the step they belong
        # to (rank 0 writes), and pl_module.log publishes them to the other callbacks through
        # trainer.callback_metrics. Every rank logs: each holds the same FID, so monitors agree.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        pl_module.log_dict(metrics, logger=False, rank_zero_only=False)

    def _reference(self, trainer, pl_module, shard: Shard) -> FeatureStats:
        if self.reference is None:
            if self.reference_path:
                self.reference = reference_from_file(self.reference_path, self.extractor, None, self.batch_size,
                                                     pl_module.device)
            else:
                self.reference = reference_statistics(
                    trainer.datamodule, self.extractor, self.reference_count, self.cache_dir,
                    batch_size=self.batch_size, device=pl_module.device, shard=shard,
                )
        return self.reference

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> float:
        """Sample this rank's share, gather the features and return the FID (the same on every rank)."""
        if isinstance(self.extractor, torch.nn.Module):
            self.extractor.to(pl_module.device)
        shard = lightning_shard(trainer, pl_module)
        reference = self._reference(trainer, pl_module, shard)
        # a conditional model: balanced classes (by sample index: labels, or a text model's class prompts),
        # guided at the run's scale
        cond, _ = pl_module.conditioning.balanced(self.num_samples, class_prompts_of(trainer.datamodule))
        images, _ = generate_shard(pl_module, self.num_samples, self.batch_size, self.seed, self.sampler, cond,
                                   rank=shard.rank, world=shard.world)
        # the Inception batches are this rank's chunks, the batches one process would use; a rank
        # without chunks (fewer chunks than ranks) sends 0 rows of the features' width
        blank = images if len(images) else blank_image(pl_module)
        local = extract_features(blank, self.extractor, self.batch_size, pl_module.device)["pool3"][: len(images)]
        local = torch.from_numpy(local).to(pl_module.device)
        sizes = shard_sizes(self.num_samples, self.batch_size, shard.world)
        features = shard.gather_rows(local, sizes).cpu().numpy()  # (K, D) in sample order, the one gather
        stats = FeatureStats.from_features(features)
        self.last = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
        return self.last


__all__ = ["FIDCallback", "fid_name", "lightning_shard"]
