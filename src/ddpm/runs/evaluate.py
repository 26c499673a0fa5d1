"""Evaluation as a function of the composed ``conf/evaluate.yaml``: ``evaluate.py`` calls it; tests
and benchmarks call it in-process.

Either a checkpoint is sampled from its EMA weights with the chosen sampler (and, for
``metrics=[nll]``, its variational bound measured on test images), or samples made elsewhere are
read from an .npz; the samples are then scored (FID, KID, IS) against reference statistics of the
training set or of a file. Everything lands in ``out_dir/metrics.json``. ``metrics=[]`` samples a
checkpoint and scores nothing: samples.npz, samples.png and metrics.json (the sampler, the time).

``devices=N`` (and ``num_nodes``) samples over N processes, launched by Lightning Fabric
(``ddpm.runs.evaluate_processes``; DDP: gloo on CPUs, NCCL on GPUs; under torchrun or a SLURM job the
processes are the job's): each samples its
block of the seeded chunks (``ddpm.evaluation.sampling.generate_shard``), rank 0 gathers the images
and scores and writes them, so the samples and the numbers are those of one process.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchvision.utils import save_image

from ddpm.data.pixels import from_uint8
from ddpm.diffusion.continuous_denoiser import ContinuousDenoiser
from ddpm.diffusion.guidance import check_labels, check_scale
from ddpm.diffusion.process_sampler import check_sampler
from ddpm.diffusion.processes import process_name
from ddpm.diffusion.likelihood import dataset_bpd
from ddpm.errors import ConfigError, check_choice
from ddpm.evaluation.distances import INCEPTION_METRICS, check_metrics, score_images
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, InceptionFeatures
from ddpm.evaluation.npz import check_npz, load_npz, save_images_npz
from ddpm.evaluation.reference import Shard, reference_from_file, reference_statistics
from ddpm.evaluation.sampling import balanced_labels, generate_shard, shard_sizes
from ddpm.plots.grid import image_grid
from ddpm.plots.likelihood import bound_by_range, write_bound_terms
from ddpm.runs.classifier_eval import check_classifier_request, classifier_eval, classifier_metrics_of
from ddpm.runs.evaluate_autoencoder import evaluate_autoencoder, is_autoencoder_checkpoint
from ddpm.runs.evaluate_processes import check_devices, fabric_shard, launch
from ddpm.runs.load import load_run
from ddpm.runs.run_config import module_kind
from ddpm.runs.validate import validate_evaluate_config
from ddpm.training.conditioning import check_prompts, class_prompts_of
from ddpm.training.speed import resolve_speed

SHOWN = ("fid", "kid_mean", "is", "nll_bpd", "fd", "fd_floor", "accuracy",
         "images_per_second")  # printed; metrics.json has everything


def denoiser_changes(cfg: DictConfig) -> dict:
    """The ``denoiser`` fields the evaluation config sets (its nulls: as trained)."""
    node = cfg.get("denoiser")
    return {} if node is None else {k: v for k, v in node.items() if v is not None}


def denoiser_summary(denoiser) -> dict:
    """What metrics.json records of the denoiser sampled: the VP ``Denoiser``'s prediction, clipping and variance,
    or a continuous one's prediction and sigma_data."""
    if isinstance(denoiser, ContinuousDenoiser):
        return dict(prediction=denoiser.prediction, sigma_data=denoiser.sigma_data, clip_denoised=denoiser.clip_denoised)
    return dict(prediction_type=denoiser.prediction_type, clip_denoised=denoiser.clip_denoised, variance=denoiser.variance)


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


def plain(value):
    """A config value as plain Python (lists for JSON)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def sample_labels(cfg: DictConfig, module, data_cfg=None) -> tuple[object, torch.Tensor | None, float | None, str]:
    """(condition for ``module.sample``, labels (N,) or None, guidance scale or None, out_dir tag) from
    ``class_labels``, ``prompts``, ``prompt_labels`` and ``guidance_scale``.

    ``class_labels``: null (balanced for a conditional model, none for an unconditional one),
    ``balanced`` (0, 1, ..., K-1, 0, ...), ``random`` (uniform, from ``seed``), or a list of labels
    repeated to num_samples. A text model is sampled with class prompts then: label k's prompt is the
    data's first caption template for class k ("a handwritten three"), so accuracy stays measurable.
    ``prompts``: a list of prompts for a text model, repeated to num_samples (``prompt_labels``: the class
    each prompt depicts, for metrics=[accuracy]). A scale, labels or prompts the model cannot take, or
    a label outside [0, num_classes), is a ConfigError (the conditioning's own line).
    """
    choice, scale, conditioning = cfg.get("class_labels"), cfg.get("guidance_scale"), module.conditioning
    prompts, prompt_labels = plain(cfg.get("prompts")), plain(cfg.get("prompt_labels"))
    if prompts is not None and not conditioning.needs_class_prompts:
        conditioning.sampling_condition(prompts, module.device)  # prompts to a label model: one line
    if not conditioning.conditional:
        for key, value in (("guidance_scale", scale), ("class_labels", choice)):
            if value is not None:
                raise ConfigError(f"{key}={value} needs a class-conditional checkpoint; this run's model is "
                                  "unconditional (conditioning=none, trained without labels): leave it unset")
        return None, None, None, ""
    n = cfg.num_samples
    scale = module.guidance_scale if scale is None else check_scale(scale)
    if prompts is not None:
        if choice is not None:
            raise ConfigError(f"class_labels={choice!r} and prompts= were both given: give one of them")
        prompts = check_prompts(prompts)
        labels = None
        if prompt_labels is not None:
            if not isinstance(prompt_labels, list) or len(prompt_labels) != len(prompts) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in prompt_labels):
                raise ConfigError(f"prompt_labels={prompt_labels!r} is not allowed: give one class label per prompt "
                                  f"({len(prompts)}), e.g. prompt_labels=[3] for prompts=['a handwritten three']")
            labels = torch.tensor(prompt_labels).repeat(-(-n // len(prompts)))[:n]
        return (prompts * -(-n // len(prompts)))[:n], labels, scale, f"_s{scale:g}_prompts-" + slug(prompts)
    table = class_prompts(data_cfg, "class_labels") if conditioning.needs_class_prompts else None
    num_classes = conditioning.class_count(table)
    if num_classes is None:  # no classes to ask for (prompt embeddings without an encoder): the empty prompt
        return None, None, scale, f"_s{scale:g}"
    if choice is None or choice == "balanced":
        labels, tag = balanced_labels(n, num_classes), ""
    elif choice == "random":
        labels, tag = torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(cfg.seed)), "_random"
    elif isinstance(choice, (list, tuple, ListConfig)) and len(choice) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in choice):
        labels = check_labels(torch.tensor(list(choice)), num_classes, "class_labels")
        labels, tag = labels.repeat(-(-n // len(labels)))[:n], "_labels-" + "-".join(map(str, list(choice)[:8]))
    else:
        raise ConfigError(f"class_labels={choice!r} is not allowed: use balanced, random or a list of labels in "
                          f"[0, {num_classes}), e.g. class_labels=[3,5]")
    tag += "_class-prompts" if table is not None else ""  # label k -> the data's class prompt, "a handwritten three"
    return conditioning.for_labels(labels, table), labels, scale, f"_s{scale:g}{tag}"


def class_prompts(data_cfg, key: str) -> list[str]:
    """One prompt per class of a captioned dataset: its first caption template filled with each class name."""
    table = None if data_cfg is None else class_prompts_of(data_cfg)
    if table is None:
        raise ConfigError(f"{key}= on a text model needs the data's class names and caption templates "
                          "(data.class_names, data.caption_templates) to make one prompt per class: give prompts=[...] instead")
    return table


def labels_known(cfg: DictConfig, module) -> int | None:
    """Not None when the samples will have class labels (for metrics=[accuracy])."""
    if cfg.get("prompts") is not None:
        return 1 if cfg.get("prompt_labels") is not None else None
    return module.conditioning.class_count(["a prompt"])  # None: no classes to ask for (unconditional, no encoder)


def slug(prompts: list[str]) -> str:
    """A short file-name-safe tag of prompts, e.g. 'a-handwritten-three' (and a hash when cut)."""
    text = "_".join(prompts)
    short = "".join(c if c.isalnum() else "-" for c in text)[:40].strip("-")
    return short if len(text) <= 40 else f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def sampler_config(cfg: DictConfig, run_cfg: DictConfig | None, module) -> DictConfig:
    """The sampler to evaluate with: ``cfg.sampler``; but for an EDM or flow run (whose samplers are not
    evaluate.yaml's default, ddpm) with no ``sampler=`` on the command line, the run's own sampler with the command
    line's ``sampler.KEY=VALUE`` overrides (``python evaluate.py ckpt_path=... sampler.steps=10``: the run's Heun)."""
    if module.is_vp or run_cfg is None or not HydraConfig.initialized():
        return cfg.sampler
    overrides = HydraConfig.get().overrides.task
    if any(o.lstrip("+~").startswith("sampler=") for o in overrides):
        return cfg.sampler
    sampler = run_cfg.sampler.copy()
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if sep and key.startswith("sampler."):
            OmegaConf.update(sampler, key[len("sampler."):], OmegaConf.select(cfg, key), force_add=True)
    return sampler


def sample_run(cfg: DictConfig, module, run_dir: Path, device,
               shard: Shard = Shard(), data_cfg=None, run_cfg: DictConfig | None = None) -> tuple[np.ndarray | None, torch.Tensor | None, Path, dict]:
    """Sample the EMA weights with cfg.sampler (this rank's chunks of ``shard``, gathered on rank 0);
    rank 0 writes samples.npz (with ``labels`` for a conditional model) and samples.png and times it.
    Returns (images uint8 (N, H, W, C) on rank 0, else None; labels (N,) or None; out_dir; info).

    The default out_dir is ``<run>/eval/<sampler>_<steps>_<num_samples>``, with the guidance scale
    and labels (``sample_labels``) and the denoiser changes appended (``denoiser_tag``), so they
    never overwrite the samples of the run as trained.
    """
    cond, labels, scale, label_tag = sample_labels(cfg, module, data_cfg)
    sampler_cfg = sampler_config(cfg, run_cfg, module)
    sampler = instantiate(sampler_cfg)
    check_sampler(sampler, module.process)  # DDPM on an EDM run: one line, before anything is sampled
    steps = len(sampler.timesteps(module.sampling_space))
    tag = label_tag + denoiser_tag(denoiser_changes(cfg))
    out_dir = Path(cfg.out_dir or run_dir / "eval" / f"{sampler.name}_{steps}_{cfg.num_samples}{tag}")
    bf16 = check_choice("precision", cfg.precision, ("fp32", "bf16")) == "bf16"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = time.perf_counter()
    with amp:
        images, _ = generate_shard(module, cfg.num_samples, cfg.batch_size, cfg.seed, sampler, cond, scale,
                                   shard.rank, shard.world, device, cfg.progress and shard.rank == 0)
    sizes = shard_sizes(cfg.num_samples, cfg.batch_size, shard.world)
    images = shard.gather_rows(torch.from_numpy(images), sizes).numpy()  # (N, H, W, C) in sample order
    seconds = time.perf_counter() - start
    info = dict(sampler=sampler.name, sampler_config=OmegaConf.to_container(sampler_cfg, resolve=True), steps=steps, nfe=steps,
                seconds=seconds, images_per_second=len(images) / seconds, seed=cfg.seed, num_samples=len(images),
                precision=cfg.precision, compile=cfg.compile, processes=shard.world)
    if shard.rank != 0:
        return None, labels, out_dir, info
    save_images_npz(out_dir / "samples.npz", images, None if labels is None else labels.numpy())
    save_image(image_grid(from_uint8(images[:64]).permute(0, 3, 1, 2)), out_dir / "samples.png")  # (N, C, H, W)
    if cond is not None:
        guided = module.guided(guidance_scale=scale)
        info.update(num_classes=module.num_classes, guidance_scale=scale, guidance_interval=guided.interval,
                    guidance_rescale=guided.rescale)
        if isinstance(cond, list):  # prompts of a text model
            info.update(prompts=sorted(set(cond)) if len(set(cond)) <= 64 else len(set(cond)))
        if cfg.get("prompts") is None:
            info.update(class_labels=plain(cfg.get("class_labels")) or "balanced")
        if labels is not None:
            info.update(label_counts=torch.bincount(labels, minlength=module.num_classes or int(labels.max()) + 1).tolist())
    return images, labels, out_dir, info


def check_request(cfg: DictConfig) -> list[str]:
    """The metrics asked for, or a ConfigError when the inputs cannot give them."""
    metrics = check_metrics(cfg.metrics)
    if bool(cfg.ckpt_path) == bool(cfg.samples_path):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r}, samples_path={cfg.samples_path!r}: "
                          "give exactly one (a checkpoint to sample, or an .npz to score)")
    if "nll" in metrics and not cfg.ckpt_path:
        raise ConfigError("metrics=[nll] needs ckpt_path=...: the bound is a property of the model, not of samples")
    if not metrics and cfg.samples_path:
        raise ConfigError(f"metrics=[] with samples_path={cfg.samples_path} does nothing: name the metrics to score "
                          "them with (e.g. metrics=[fid]); metrics=[] only samples a checkpoint (ckpt_path=...)")
    changes = denoiser_changes(cfg)
    if changes and not cfg.ckpt_path:
        given = " ".join(f"denoiser.{k}={v}" for k, v in changes.items())
        raise ConfigError(f"{given} changes how a checkpoint is sampled: it needs ckpt_path=..., not samples_path")
    validate_evaluate_config(cfg)  # types and ranges, before anything is loaded
    check_devices(cfg)  # a job over several processes that cannot run, before anything is loaded
    for path in (cfg.samples_path, cfg.reference_path):
        if path:
            check_npz(path)  # from the array headers: not an .npz, object arrays, dtype, NCHW or ambiguous layout
    return metrics


def evaluate(cfg: DictConfig, feature_extractor: Extractor | None = None) -> dict:
    """Sample (or read) images, score them and write ``metrics.json``; returns what it holds.

    ``feature_extractor`` stands in for the Inception network (tests); built from
    ``cfg.inception_weights`` when None and a sample metric is asked for. Under ``devices=N`` every
    process samples its share and returns ``{}``, except rank 0, which scores, writes and returns.
    """
    if cfg.get("ckpt_path") and is_autoencoder_checkpoint(cfg.ckpt_path):  # issue 15: reconstructions, not samples
        return evaluate_autoencoder(cfg, feature_extractor)
    metrics = check_request(cfg)
    scores = [m for m in metrics if m in INCEPTION_METRICS]  # the Inception metrics of samples
    # --- CPU classifier metrics (issue 11; ddpm.runs.classifier_eval): fd, accuracy need no Inception ---
    domain = classifier_metrics_of(metrics)
    if domain and cfg.samples_path:
        check_classifier_request(cfg, metrics)  # data=NAME given, labels present for accuracy
    extractor = feature_extractor
    if scores and extractor is None:  # fails early without weights (in every process: before the launch)
        extractor = InceptionFeatures(cfg.inception_weights)
    loaded = load_run(cfg.ckpt_path, denoiser_changes(cfg)) if cfg.ckpt_path else None  # before the launch too
    if "nll" in metrics and loaded and not loaded[2].is_vp:
        raise ConfigError(f"metrics=[nll] is the discrete chain's variational bound (process=vp); this run is process="
                          f"{process_name(loaded[2].process)}, which has no such bound here: leave nll out (measure fd, fid)")
    if "nll" in metrics and loaded and module_kind(loaded[1]) == "latent":
        raise ConfigError("metrics=[nll] on a latent diffusion model would be bits/dim of its autoencoder's latents, "
                          "not of images: leave nll out (measure fd, fid) for a codec=autoencoder run")
    fabric = launch(cfg)  # None: this one process
    shard = fabric_shard(fabric)
    device = fabric.device if fabric else torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(extractor, torch.nn.Module) and shard.rank == 0:
        extractor.to(device)
    result, images, labels = {}, None, None  # labels (N,) of conditional samples, else None
    if cfg.ckpt_path:  # 1. sample the run's EMA weights with the chosen sampler
        run_dir, run_cfg, module = loaded
        module.to(device)
        module.speed_up(*resolve_speed(cfg.channels_last, cfg.compile, device))  # "auto": on a GPU
        data_cfg = cfg.get("data") or run_cfg.data
        test_set = instantiate(data_cfg).test_dataset() if "nll" in metrics else None  # fail before sampling
        check_classifier_request(cfg, metrics, labels_known(cfg, module))  # accuracy needs a conditional model
        denoiser = module.denoiser()
        result.update(ckpt_path=str(cfg.ckpt_path), process=process_name(module.process), denoiser=denoiser_summary(denoiser))
        if scores or domain or not metrics:  # metrics=[]: the samples alone
            images, labels, out_dir, info = sample_run(cfg, module, run_dir, device, shard, data_cfg, run_cfg)
            result.update(info)
        else:
            out_dir = Path(cfg.out_dir or run_dir / "eval" / f"nll_{denoiser.variance}_{cfg.nll.num_images}")
        if shard.rank != 0:
            return {}  # rank 0 scores the gathered samples (and measures the bound)
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
    if domain:  # 2'. FD (and its data floor), per-class FD, accuracy: the dataset's classifier, on the CPU
        result.update(classifier_eval(cfg, metrics, images, labels, data_cfg))
    if "nll" in metrics:  # 3. the variational bound on test images, with the (possibly changed) denoiser
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        bound = dataset_bpd(module.denoiser(use_ema=True), test_set, cfg.nll.num_images, cfg.nll.batch_size,
                            generator, device, cfg.progress)
        terms = bound.pop("nll_terms_bpd")  # (T,): the table and the figure; metrics.json gets 10 ranges of t
        result.update(bound, nll_bpd_by_t_range=bound_by_range(terms))
        result.update(write_bound_terms(terms, bound["nll_prior_bpd"], out_dir,
                                        f"{cfg.ckpt_path}: {bound['nll_bpd']:.4f} bits/dim on {bound['nll_num_images']} "
                                        f"test images, variance {module.denoiser().variance}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{json.dumps({k: v for k, v in result.items() if k in SHOWN})}\nwritten to {out_dir}")
    return result
