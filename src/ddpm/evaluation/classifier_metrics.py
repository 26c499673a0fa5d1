"""Sample quality on a CPU from the dataset's own small classifier (``ddpm.evaluation.classifier``):

    FD        ||mu_s - mu_r||^2 + tr(S_s + S_r - 2 (S_s S_r)^{1/2}) of its penultimate-layer features,
              samples vs the whole training split: FID's formula (Heusel et al. 2017) with domain
              features instead of Inception's; reported beside the data floor FD(test split, train split)
    accuracy  for conditional samples, the fraction the classifier assigns to the requested label
              (the "classification accuracy score" view of conditional generation)
    per-class FD   samples requested as class k vs the training images of class k (balanced samples)

The Frechet distance is ``ddpm.evaluation.distances.frechet_distance`` (float64), the same as FID's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError
from ddpm.evaluation.classifier import DomainClassifier, load_or_train
from ddpm.evaluation.distances import frechet_distance
from ddpm.evaluation.feature_stats import FeatureStats

CLASSIFIER_METRICS = ("fd", "accuracy")


def frechet_to(features: np.ndarray, reference: FeatureStats) -> float:
    """FD of (N, D) features against ``reference``'s mean and covariance (N >= 2)."""
    stats = FeatureStats.from_features(features)
    return frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)


def label_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows of ``logits`` (N, K) whose argmax is the requested label (N,)."""
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def per_class_fd(features: np.ndarray, labels: np.ndarray, class_reference: list[FeatureStats]) -> list[float | None]:
    """For each class k, FD of the features (N, D) of the samples requested as k against the training
    images of class k; None where fewer than 2 samples asked for k."""
    labels = np.asarray(labels)
    return [frechet_to(features[labels == k], ref) if (labels == k).sum() >= 2 else None
            for k, ref in enumerate(class_reference)]


def load_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The ``labels`` array of a samples .npz (int64 (N,)), or None when it holds none (unconditional)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    with np.load(path) as f:
        return f["labels"].astype(np.int64) if "labels" in f.files else None


def check_labels(labels, num_images: int, num_classes: int) -> np.ndarray:
    """``labels`` as int64 (N,), or a ConfigError when their count or values do not fit."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_images:
        raise ConfigError(f"labels of shape {labels.shape} do not fit {num_images} images: expected ({num_images},)")
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ConfigError(f"labels must be integers in [0, {num_classes}), got values {sorted(set(labels.tolist()))[:10]}")
    return labels.astype(np.int64)


def needs_labels(metrics, has_labels: bool, source: str) -> None:
    """A ConfigError when ``accuracy`` is asked for samples without requested labels (``source`` names them)."""
    if "accuracy" in metrics and not has_labels:
        raise ConfigError(f"metrics=[accuracy] needs the labels the samples were asked for, and {source} has none "
                          "(unconditional samples): use metrics=[fd], or a class-conditional model's samples.npz")


def classifier_scores(images: np.ndarray, labels: np.ndarray | None, classifier: DomainClassifier,
                      metrics=CLASSIFIER_METRICS, batch_size: int = 500) -> dict:
    """FD (with the data floor and, given labels, per-class FD) and accuracy of uint8 (N, H, W, C)
    ``images`` asked for as ``labels`` (N,) (None: unconditional)."""
    needs_labels(metrics, labels is not None, "the samples")
    features, logits = classifier.features(images, batch_size)
    info = classifier.info
    out: dict = {"classifier": {k: info.get(k) for k in ("dataset", "test_accuracy", "test_count", "path")}}
    if labels is not None:
        labels = check_labels(labels, len(images), classifier.num_classes)
    if "fd" in metrics:
        out.update(fd=frechet_to(features, classifier.reference), fd_floor=info["floor_fd"],
                   fd_floor_count=info["test_count"], fd_reference_count=classifier.reference.count)
        if labels is not None:
            out["fd_per_class"] = per_class_fd(features, labels, classifier.class_reference)
    if "accuracy" in metrics:
        out["accuracy"] = label_accuracy(logits, labels)
        out["accuracy_per_class"] = [label_accuracy(logits[labels == k], labels[labels == k]) if (labels == k).any()
                                     else None for k in range(classifier.num_classes)]
    return out


def score_with_classifier(images: np.ndarray, labels: np.ndarray | None, datamodule, metrics=CLASSIFIER_METRICS,
                          cache_dir: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """``classifier_scores`` with the cached (else freshly trained) classifier of ``datamodule``'s dataset."""
    needs_labels(metrics, labels is not None, "the samples")
    return classifier_scores(images, labels, load_or_train(datamodule, cache_dir, progress), metrics)
