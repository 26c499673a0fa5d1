"""Evaluation as a function of the composed ``conf/evaluate.yaml``: ``evaluate.py`` calls it; tests
and benchmarks call it in-process.

Either a checkpoint is sampled from its EMA weights with the chosen sampler (and, for
``metrics=[nll]``, its variational bound measured on test images), or samples made elsewhere are
read from an .npz; the samples are then scored (FID, KID, IS) against reference statistics of the
training set or of a file. Everything lands in ``out_dir/metrics.json``.
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

from ddpm.data.pixels import from_uint8
from ddpm.diffusion.likelihood import dataset_bpd
from ddpm.errors import ConfigError, check_choice
from ddpm.evaluation.distances import check_metrics, score_images
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, InceptionFeatures
from ddpm.evaluation.npz import load_npz, save_images_npz
from ddpm.evaluation.reference import reference_from_file, reference_statistics
from ddpm.evaluation.sampling import generate_images
from ddpm.plots.grid import image_grid
from ddpm.runs.load import load_run
from ddpm.training.speed import resolve_speed

SHOWN = ("fid", "kid_mean", "is", "nll_bpd", "images_per_second")  # printed; metrics.json has everything


def denoiser_changes(cfg: DictConfig) -> dict:
    """The ``denoiser`` fields the evaluation config sets (its nulls: as trained)."""
    node = cfg.get("denoiser")
    return {} if node is None else {k: v for k, v in node.items() if v is not None}


def denoiser_tag(changes: dict) -> str:
    """The denoiser changes in an out_dir name: ``_fixed_large``, ``_clip``/``_noclip``, or ``""``."""
    parts = [changes["variance"]] if "variance" in changes else []
    if "clip_denoised" in changes:
        parts.append("clip" if changes["clip_denoised"] else "noclip")
    return "".join(f"_{p}" for p in parts)


def load_reference(cfg: DictConfig, data_cfg, extractor: Extractor, device) -> tuple[FeatureStats, str]:
    """Statistics from reference_path (images or mu/sigma), else of the training set of ``data_cfg`` (cached)."""
    if cfg.reference_path:
        ref = reference_from_file(cfg.reference_path, extractor, cfg.kid_features, cfg.batch_size, device, cfg.progress)
        return ref, str(cfg.reference_path)
    if data_cfg is None:
        raise ConfigError(
            "samples_path needs a reference: reference_path=FILE.npz (images or mu/sigma) "
            "or data=NAME (e.g. data=mnist data.root=DIR)"
        )
    ref = reference_statistics(instantiate(data_cfg), extractor, cfg.reference_count, cfg.reference_cache_dir,
                               cfg.kid_features, cfg.batch_size, device, cfg.progress)
    return ref, f"{data_cfg.dataset._target_} train split, {ref.count} images"


def sample_run(cfg: DictConfig, module, run_dir: Path, device) -> tuple[np.ndarray, Path, dict]:
    """Sample the EMA weights with cfg.sampler; write samples.npz and samples.png; time it.

    The default out_dir is ``<run>/eval/<sampler>_<steps>_<num_samples>``, with the denoiser
    changes appended (``denoiser_tag``), so they never overwrite the samples of the run as trained.
    """
    sampler = instantiate(cfg.sampler)
    steps = len(sampler.timesteps(module.schedule))
    tag = denoiser_tag(denoiser_changes(cfg))
    out_dir = Path(cfg.out_dir or run_dir / "eval" / f"{sampler.name}_{steps}_{cfg.num_samples}{tag}")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bf16 = check_choice("precision", cfg.precision, ("fp32", "bf16")) == "bf16"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = time.perf_counter()
    with amp:
        images = generate_images(module, cfg.num_samples, cfg.batch_size, generator, sampler, cfg.progress)
    seconds = time.perf_counter() - start
    save_images_npz(out_dir / "samples.npz", images)
    save_image(image_grid(from_uint8(images[:64]).permute(0, 3, 1, 2)), out_dir / "samples.png")  # (N, C, H, W)
    info = dict(sampler=sampler.name, sampler_config=OmegaConf.to_container(cfg.sampler, resolve=True), steps=steps,
                seconds=seconds, images_per_second=len(images) / seconds, seed=cfg.seed, num_samples=len(images),
                precision=cfg.precision, compile=cfg.compile)
    return images, out_dir, info


def check_request(cfg: DictConfig) -> list[str]:
    """The metrics asked for, or a ConfigError when the inputs cannot give them."""
    metrics = check_metrics(cfg.metrics)
    if bool(cfg.ckpt_path) == bool(cfg.samples_path):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}, samples_path={cfg.samples_path!r}: "
                          "give exactly one (a checkpoint to sample, or an .npz to score)")
    if "nll" in metrics and not cfg.ckpt_path:
        raise ConfigError("metrics=[nll] needs ckpt_path=...: the bound is a property of the model, not of samples")
    changes = denoiser_changes(cfg)
    if changes and not cfg.ckpt_path:
        given = " ".join(f"denoiser.{k}={v}" for k, v in changes.items())
        raise ConfigError(f"{given} changes how a checkpoint is sampled: it needs ckpt_path=..., not samples_path")
    return metrics


def evaluate(cfg: DictConfig, feature_extractor: Extractor | None = None) -> dict:
    """Sample (or read) images, score them and write ``metrics.json``; returns what it holds.

    ``feature_extractor`` stands in for the Inception network (tests); built from
    ``cfg.inception_weights`` when None and a sample metric is asked for.
    """
    metrics = check_request(cfg)
    scores = [m for m in metrics if m != "nll"]  # the metrics of samples
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = feature_extractor
    if scores and extractor is None:
        extractor = InceptionFeatures(cfg.inception_weights)  # fails early without weights
    if isinstance(extractor, torch.nn.Module):
        extractor.to(device)
    result, images = {}, None
    if cfg.ckpt_path:  # 1. sample the run's EMA weights with the chosen sampler
        run_dir, run_cfg, module = load_run(cfg.ckpt_path, denoiser_changes(cfg))
        module.to(device)
        module.speed_up(*resolve_speed(cfg.channels_last, cfg.compile, device))  # "auto": on a GPU
        data_cfg = cfg.get("data") or run_cfg.data
        test_set = instantiate(data_cfg).test_dataset() if "nll" in metrics else None  # fail before sampling
        denoiser = module.denoiser()
        result.update(ckpt_path=str(cfg.ckpt_path), denoiser=dict(prediction_type=denoiser.prediction_type,
                      clip_denoised=denoiser.clip_denoised, variance=denoiser.variance))
        if scores:
            images, out_dir, info = sample_run(cfg, module, run_dir, device)
            result.update(info)
        else:
            out_dir = Path(cfg.out_dir or run_dir / "eval" / f"nll_{denoiser.variance}_{cfg.nll.num_images}")
    else:  # 1'. or read samples made elsewhere
        images = load_npz(cfg.samples_path)
        if isinstance(images, FeatureStats):
            raise ConfigError(f"samples_path='{cfg.samples_path}' holds mu/sigma, not images: scoring needs the images")
        path = Path(cfg.samples_path)
        out_dir = Path(cfg.out_dir or path.parent / f"{path.stem}_metrics")
        result.update(samples_path=str(path), sampler=None, steps=None, seconds=None, images_per_second=None,
                      num_samples=len(images))
        data_cfg = cfg.get("data")
    if scores:  # 2. FID, KID, IS against the reference
        reference, result["reference"] = load_reference(cfg, data_cfg, extractor, device)
        result.update(score_images(images, reference, extractor, scores, cfg.kid_subsets, cfg.kid_subset_size,
                                   cfg.batch_size, device, cfg.progress))
    if "nll" in metrics:  # 3. the variational bound on test images, with the (possibly changed) denoiser
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        result.update(dataset_bpd(module.denoiser(use_ema=True), test_set, cfg.nll.num_images,
                                  cfg.nll.batch_size, generator, device, cfg.progress))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{json.dumps({k: v for k, v in result.items() if k in SHOWN})}\nwritten to {out_dir}")
    return result
