"""``evaluate.py`` on an autoencoder checkpoint (``task=autoencoder``): how well it reconstructs held-out images.

    python evaluate.py ckpt_path=RUN/checkpoints/last.ckpt metrics=[psnr,fd]

The first ``num_samples`` images of the data's test split are encoded and decoded (posterior means,
fp32) and scored: ``psnr`` (dB, images in [0, 1], the mean of per-image values), ``fd`` and
``accuracy`` (the dataset classifier of ``ddpm.evaluation.classifier`` on the reconstructions:
FD against its training-set reference, beside ``fd_floor``, the originals' own FD; accuracy against the
true labels), ``fid`` / ``kid`` (Inception, reconstructions against the originals, as LDM's rFID, or
against ``reference_path``). ``out_dir`` (default ``<run>/eval/reconstructions_<N>``) gets
``reconstructions.npz`` (``originals``, ``reconstructions``: uint8 NHWC; ``labels``), a grid
``reconstructions.png`` (originals left, reconstructions right) and ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ddpm.data.pixels import to_uint8
from ddpm.errors import ConfigError
from ddpm.evaluation.classifier_metrics import CLASSIFIER_METRICS
from ddpm.evaluation.distances import check_metrics, score_images
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, InceptionFeatures, extract_features
from ddpm.evaluation.reconstruction import psnr
from ddpm.evaluation.reference import reference_from_file
from ddpm.plots.grid import image_grid
from ddpm.runs.autoencoder_load import load_autoencoder
from ddpm.runs.classifier_eval import classifier_eval
from ddpm.runs.run_config import module_kind, read_run_config
from ddpm.runs.validate import validate_evaluate_config
from ddpm.training.checkpoints import run_of_checkpoint

SHOWN = ("psnr", "fd", "fd_floor", "accuracy", "fid", "kid_mean")  # printed; metrics.json has everything


def is_autoencoder_checkpoint(ckpt_path) -> bool:
    """Whether ``<run>/checkpoints/X.ckpt``'s run trained an autoencoder (False for anything unreadable:
    the diffusion loader then says what is wrong with it)."""
    try:
        _, run_dir = run_of_checkpoint(str(ckpt_path))
        return module_kind(OmegaConf.load(run_dir / "config.yaml")) == "autoencoder"
    except Exception:
        return False


def test_images(data_cfg, count: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """The first ``count`` images (N, C, H, W) in [-1, 1] of the data's test split, and their labels (N,) or None."""
    dataset = instantiate(data_cfg).test_dataset()  # a DataError naming the option when there is none
    count = min(count, len(dataset))
    items = [dataset[i] for i in range(count)]
    labels = [item[1] for item in items] if isinstance(items[0], (tuple, list)) and len(items[0]) > 1 else None
    images = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
    return images, None if labels is None else np.asarray([int(y) for y in labels])


def evaluate_autoencoder(cfg: DictConfig, feature_extractor: Extractor | None = None) -> dict:
    """Reconstruct the test split with the autoencoder of ``cfg.ckpt_path``, score and write it (see the
    module docstring); returns what ``metrics.json`` holds."""
    metrics = check_metrics(cfg.metrics, autoencoder=True)
    if cfg.get("samples_path"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} is an autoencoder and samples_path={cfg.samples_path!r} was "
                          "given too: an autoencoder is scored on its reconstructions; give only ckpt_path")
    validate_evaluate_config(cfg)
    inception = [m for m in metrics if m in ("fid", "kid")]
    extractor = feature_extractor
    if inception and extractor is None:
        extractor = InceptionFeatures(cfg.inception_weights)  # fails early without weights
    autoencoder, info = load_autoencoder(cfg.ckpt_path)
    _, run_dir = run_of_checkpoint(str(cfg.ckpt_path))
    data_cfg = cfg.get("data") or read_run_config(run_dir / "config.yaml").data
    images, labels = test_images(data_cfg, cfg.num_samples)  # (N, C, H, W), (N,)
    if "accuracy" in metrics and labels is None:
        raise ConfigError("metrics=[accuracy] needs a labelled test split: this data has no labels; leave it out")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autoencoder.to(device)
    start = time.perf_counter()
    with torch.no_grad():
        rec = torch.cat([autoencoder(b.to(device), sample_posterior=False)[0].clamp(-1, 1).cpu()
                         for b in images.split(cfg.batch_size)])  # (N, C, H, W)
    seconds = time.perf_counter() - start
    per_image = psnr(images, rec)  # (N,)
    originals, reconstructions = to_uint8(images), to_uint8(rec)  # (N, H, W, C) uint8
    result: dict = {"ckpt_path": str(cfg.ckpt_path), "autoencoder": info, "num_images": len(images),
                    "seconds": seconds, "images_per_second": len(images) / seconds}
    result["autoencoder"]["latent_shape"] = list(info["latent_shape"])
    if "psnr" in metrics:
        result.update(psnr=float(per_image.mean()), psnr_std=float(per_image.std()))
    classifier = [m for m in metrics if m in CLASSIFIER_METRICS]
    if classifier:  # FD of the reconstructions (fd_floor: the held-out originals'), accuracy against the true labels
        result.update(classifier_eval(cfg, classifier, reconstructions, labels, data_cfg))
    if inception:
        extractor = extractor.to(device) if isinstance(extractor, torch.nn.Module) else extractor
        if cfg.get("reference_path"):
            reference = reference_from_file(cfg.reference_path, extractor, cfg.kid_features, cfg.batch_size, device,
                                            cfg.progress)
            result["reference"] = str(cfg.reference_path)
        else:  # rFID: reconstructions against their originals
            features = extract_features(originals, extractor, cfg.batch_size, device, cfg.progress)["pool3"]
            reference = FeatureStats.from_features(features, cfg.kid_features)
            result["reference"] = f"the {len(originals)} original test images"
        result.update(score_images(reconstructions, reference, extractor, inception, cfg.kid_subsets,
                                   min(cfg.kid_subset_size, len(reconstructions)), cfg.batch_size, device, cfg.progress))
    out_dir = Path(cfg.out_dir or run_dir / "eval" / f"reconstructions_{len(images)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"originals": originals, "reconstructions": reconstructions}
    np.savez(out_dir / "reconstructions.npz", **arrays, **({} if labels is None else {"labels": labels}))
    shown = slice(0, min(32, len(images)))
    save_image(torch.cat([image_grid(images[shown], nrow=4), image_grid(rec[shown], nrow=4)], dim=-1),
               out_dir / "reconstructions.png")
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{json.dumps({k: v for k, v in result.items() if k in SHOWN})}\nwritten to {out_dir}")
    return result
