"""Sample a trained DDPM from its EMA weights and score the samples (FID, KID, IS, NLL), offline.

    python evaluate.py ckpt_path=outputs/train/RUN/checkpoints/last.ckpt sampler=ddim sampler.steps=50 num_samples=50000
    python evaluate.py ckpt_path=RUN/checkpoints/last.ckpt metrics=[fid,kid,is,nll]
    python evaluate.py samples_path=samples.npz reference_path=reference.npz   # samples made elsewhere
"""

import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ddpm.errors import ConfigError, check_choice, report_config_errors
from ddpm.evaluation.metrics import (
    FeatureStats, InceptionFeatures, check_metrics, extract_features, generate_images, load_npz, reference_statistics,
    save_images_npz, score_images,
)
from ddpm.diffusion.likelihood import dataset_bpd
from ddpm.plots.grid import image_grid
from ddpm.runs.build import build_module
from ddpm.runs.legacy import upgrade_run_config


def load_run(ckpt_path: str):
    """(run dir, its config, the module with the checkpoint's weights); a run dir holds config.yaml and checkpoints/."""
    ckpt = Path(ckpt_path).expanduser()
    run_dir = ckpt.parent.parent
    if not ckpt.is_file() or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"ckpt_path='{ckpt}' is not a checkpoint in <run>/checkpoints/ with <run>/config.yaml")
    run_cfg = upgrade_run_config(OmegaConf.load(run_dir / "config.yaml"))
    module = build_module(run_cfg)
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    return run_dir, run_cfg, module


def load_reference(cfg: DictConfig, data_cfg, extractor, device) -> tuple[FeatureStats, str]:
    """Statistics from reference_path (images or mu/sigma), else of the training set of ``data_cfg`` (cached)."""
    if cfg.reference_path:
        ref = load_npz(cfg.reference_path)
        if not isinstance(ref, FeatureStats):
            features = extract_features(ref, extractor, cfg.batch_size, device, cfg.progress)["pool3"]
            ref = FeatureStats.from_features(features, cfg.kid_features)
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
    """Sample the EMA weights with cfg.sampler; write samples.npz and samples.png; time it."""
    sampler = instantiate(cfg.sampler)
    steps = len(sampler.timesteps(module.schedule))
    out_dir = Path(cfg.out_dir or run_dir / "eval" / f"{sampler.name}_{steps}_{cfg.num_samples}")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    bf16 = check_choice("precision", cfg.precision, ("fp32", "bf16")) == "bf16"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = time.perf_counter()
    with amp:
        images = generate_images(module, cfg.num_samples, cfg.batch_size, generator, sampler, cfg.progress)
    seconds = time.perf_counter() - start
    save_images_npz(out_dir / "samples.npz", images)
    save_image(image_grid(torch.from_numpy(images[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1), out_dir / "samples.png")
    info = dict(sampler=sampler.name, sampler_config=OmegaConf.to_container(cfg.sampler, resolve=True), steps=steps,
                seconds=seconds, images_per_second=len(images) / seconds, seed=cfg.seed, num_samples=len(images),
                precision=cfg.precision, compile=cfg.compile)
    return images, out_dir, info


def evaluate(cfg: DictConfig) -> dict:
    metrics = check_metrics(cfg.metrics)
    scores = [m for m in metrics if m != "nll"]  # the metrics of samples
    if bool(cfg.ckpt_path) == bool(cfg.samples_path):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}, samples_path={cfg.samples_path!r}: "
                          "give exactly one (a checkpoint to sample, or an .npz to score)")
    if "nll" in metrics and not cfg.ckpt_path:
        raise ConfigError("metrics=[nll] needs ckpt_path=...: the bound is a property of the model, not of samples")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = InceptionFeatures(cfg.inception_weights).to(device) if scores else None  # fails early without weights
    result, images = {}, None
    if cfg.ckpt_path:  # 1. sample the run's EMA weights with the chosen sampler
        run_dir, run_cfg, module = load_run(cfg.ckpt_path)
        module.to(device)
        channels_last = device.type == "cuda" if cfg.channels_last == "auto" else bool(cfg.channels_last)
        module.speed_up(channels_last=channels_last, compile_mode=cfg.compile or None)
        data_cfg = cfg.get("data") or run_cfg.data
        test_set = instantiate(data_cfg).test_dataset() if "nll" in metrics else None  # fail before sampling
        result["ckpt_path"] = str(cfg.ckpt_path)
        if scores:
            images, out_dir, info = sample_run(cfg, module, run_dir, device)
            result.update(info)
        else:
            out_dir = Path(cfg.out_dir or run_dir / "eval" / f"nll_{module.denoiser().variance}_{cfg.nll.num_images}")
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
    if "nll" in metrics:  # 3. the variational bound on test images
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        result.update(dataset_bpd(module.denoiser(use_ema=True), test_set, cfg.nll.num_images,
                                  cfg.nll.batch_size, generator, device, cfg.progress))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k in ("fid", "kid_mean", "is", "nll_bpd", "images_per_second")}
    print(f"{json.dumps(shown)}\nwritten to {out_dir}")
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_config_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
