"""FD and accuracy during training: the CPU-cheap sibling of ``FIDCallback``, with the dataset's own
small classifier (``ddpm.evaluation.classifier``) in place of Inception."""

from __future__ import annotations

import time

import numpy as np
import torch

from ddpm.diffusion.process_sampler import sampler_for
from ddpm.evaluation.classifier import DomainClassifier, load_or_train
from ddpm.evaluation.classifier_metrics import frechet_to, label_accuracy
from ddpm.evaluation.sampling import generate_shard, shard_sizes
from ddpm.training.callbacks.fid import lightning_shard
from ddpm.training.callbacks.periodic import EveryNSteps, check_sampled_evaluation
from ddpm.training.conditioning import class_prompts_of


class ClassifierMetricsCallback(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps, ``num_samples`` EMA samples scored by the dataset's
    classifier: ``val/fd`` (Frechet distance of its penultimate features to the training split's) and,
    for a class-conditional model (balanced labels, the run's guidance scale or ``guidance_scale``),
    ``val/accuracy`` (the fraction classified as the requested label); also ``val/fd_seconds``.
    Logged to every logger and published with ``pl_module.log`` (so ``ModelCheckpoint`` can monitor them).

    The classifier is trained once per dataset (seconds for digits, minutes for MNIST on a CPU) and
    cached in ``cache_dir``. The samples are those of one process for any number of processes
    (``generate_shard``: a seed per chunk of ``batch_size``): under DDP each rank samples and scores
    its block of chunks and the features and logits are gathered once in sample order, so the
    numbers are bit-equal to one process's on the same weights.

    Args:
        every_n_steps: steps between evaluations.
        num_samples: samples per evaluation (FD is biased up for few samples: compare equal counts).
        batch_size: sampling (and classifier) batch size; the samples come in chunks of it, one seed each.
        sampler: the sampler to use (e.g. a DDIMSampler for speed); None: the module's own.
        seed: seed of the samples, the same at every evaluation, so changes come from the model.
        guidance_scale: guidance of conditional models (None: the run's configured scale).
        cache_dir: where classifiers are cached (None: ``$DDPM_CLASSIFIER_CACHE`` or ``~/.cache/ddpm/classifier``).
    """

    def __init__(self, every_n_steps: int = 1000, num_samples: int = 1000, batch_size: int = 250, sampler=None,
                 seed: int = 0, guidance_scale: float | None = None, cache_dir: str | None = None):
        check_sampled_evaluation(every_n_steps, num_samples, batch_size, seed)
        super().__init__(every_n_steps)
        self.num_samples, self.batch_size, self.sampler, self.seed = num_samples, batch_size, sampler, seed
        self.guidance_scale, self.cache_dir = guidance_scale, cache_dir
        self.classifier: DomainClassifier | None = None
        self.last: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Load (or train) the classifier at the start, so a dataset without one fails before training."""
        self.sampler = sampler_for(self.sampler, pl_module.process, pl_module.sampler)  # off VP: the run's, not DDIM
        if self.classifier is None:
            self.classifier = load_or_train(trainer.datamodule, self.cache_dir)

    def run(self, trainer, pl_module) -> None:
        start = time.perf_counter()
        metrics = self.evaluate(trainer, pl_module)
        metrics["val/fd_seconds"] = time.perf_counter() - start
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        pl_module.log_dict(metrics, logger=False, rank_zero_only=False)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> dict:
        """Sample this rank's share, gather features and logits once; ``{"val/fd": .., "val/accuracy": ..}``
        (accuracy only for a conditional model), the same on every rank."""
        if self.classifier is None:
            self.classifier = load_or_train(trainer.datamodule, self.cache_dir)
        shard = lightning_shard(trainer, pl_module)
        # balanced classes (N,) by sample index: labels, or a text model's class prompts; no labels for a model
        # that cannot be asked for a class (unconditional, precomputed embeddings): no accuracy
        cond, labels = pl_module.conditioning.balanced(self.num_samples, class_prompts_of(trainer.datamodule))
        images, _ = generate_shard(pl_module, self.num_samples, self.batch_size, self.seed, self.sampler, cond,
                                   self.guidance_scale if labels is not None else None, shard.rank, shard.world)
        # (n, D), (n, K) float64 on the CPU, in batches of this rank's chunks (the batches of one process)
        features, logits = self.classifier.features(images, batch_size=self.batch_size)
        local = torch.from_numpy(np.concatenate([features, logits], 1)).to(pl_module.device)
        sizes = shard_sizes(self.num_samples, self.batch_size, shard.world)
        both = shard.gather_rows(local, sizes).cpu().numpy()  # (N, D + K) in sample order, the one gather
        d = features.shape[1]
        out = {"val/fd": frechet_to(both[:, :d], self.classifier.reference)}
        if labels is not None:
            out["val/accuracy"] = label_accuracy(both[:, d:], labels.numpy())
        self.last = out
        return out


__all__ = ["ClassifierMetricsCallback"]
