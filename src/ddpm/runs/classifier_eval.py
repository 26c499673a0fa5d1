"""``evaluate.py metrics=[fd,accuracy]``: the CPU classifier metrics (``ddpm.evaluation.classifier_metrics``)
of a checkpoint's samples or of a samples .npz, with the dataset named by the run or by ``data=``."""

from __future__ import annotations

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm.errors import ConfigError
from ddpm.evaluation.classifier_metrics import CLASSIFIER_METRICS, load_labels, needs_labels, score_with_classifier


def classifier_metrics_of(metrics) -> list[str]:
    """The metrics asked for that the dataset classifier measures (fd, accuracy)."""
    return [m for m in metrics if m in CLASSIFIER_METRICS]


def check_classifier_request(cfg: DictConfig, metrics, num_classes: int | None = None) -> None:
    """Before anything is sampled: a ConfigError when fd/accuracy cannot be measured: accuracy for an
    unconditional checkpoint (``num_classes`` None) or for a samples .npz without ``labels``, and
    samples_path without ``data=NAME`` (which classifier to use)."""
    wanted = classifier_metrics_of(metrics)
    if not wanted:
        return
    if cfg.samples_path:
        if cfg.get("data") is None:
            raise ConfigError(f"metrics={wanted} on samples_path needs the dataset the samples imitate: "
                              "data=NAME (e.g. data=digits, or data=mnist data.root=DIR)")
        needs_labels(wanted, load_labels(cfg.samples_path) is not None, f"samples_path='{cfg.samples_path}'")
    else:
        needs_labels(wanted, num_classes is not None, f"ckpt_path='{cfg.ckpt_path}' (an unconditional model)")


def classifier_eval(cfg: DictConfig, metrics, images: np.ndarray, labels, data_cfg) -> dict:
    """FD (with its data floor and per-class FD) and accuracy of uint8 (N, H, W, C) ``images`` asked
    for as ``labels`` (N,) (None: read from samples_path's ``labels``, if any), by the classifier of
    ``data_cfg``'s dataset (trained and cached in ``cfg.classifier_cache_dir`` on first use)."""
    wanted = classifier_metrics_of(metrics)
    if labels is None and cfg.samples_path:
        labels = load_labels(cfg.samples_path)
    if labels is not None:
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    datamodule = instantiate(data_cfg)
    return score_with_classifier(images, labels, datamodule, wanted, cfg.get("classifier_cache_dir"), cfg.progress)
