"""Sample quality on Inception-v3 features, offline: FID, KID and Inception Score.

Features come from the 2015-12-05 TensorFlow Inception-v3 of the FID paper through torch-fidelity's
``FeatureExtractorInceptionV3`` (TF1-compatible bilinear resize to 299x299, 2048-d pool3, 1008
logits): the features torch-fidelity, pytorch-fid and TTUR use. Images are uint8 (N, H, W, C),
the layout of ``samples.npz``; grayscale is replicated to three channels.

    FID  ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})    (Heusel et al. 2017), float64
    KID  unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over random subsets   (Binkowski et al. 2018)
    IS   exp E_x KL(p(y|x) || p(y)) averaged over splits           (Salimans et al. 2016)

Reference statistics of a training set are computed once and cached as ``<key>.npz`` (mu, sigma,
count and a subset of features for KID), keyed by dataset, split, count and resolution.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm.errors import ConfigError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download name
METRICS = ("fid", "kid", "is", "nll")
FIXED_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")  # the same images under any root
Extractor = Callable[[Tensor], dict]  # uint8 (N, 3, H, W) -> {"pool3": (N, D), "logits": (N, K) or None}


# ---- the Inception network --------------------------------------------------------------------
def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else $DDPM_INCEPTION_WEIGHTS, else torch-fidelity's cache."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"inception_weights='{path}' does not exist: point it at torch-fidelity's {INCEPTION_FILE}")
        return path
    candidates = [os.environ.get("DDPM_INCEPTION_WEIGHTS"), Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    raise ConfigError(
        f"no Inception weights found (nothing is downloaded): set inception_weights=FILE or the environment variable "
        f"DDPM_INCEPTION_WEIGHTS to torch-fidelity's {INCEPTION_FILE}, or put that file in {candidates[1].parent}"
    )


class InceptionFeatures(nn.Module):
    """uint8 (N, 3, H, W) -> {"pool3": (N, 2048), "logits": (N, 1008) or None}, never in train mode.

    ``logits`` is None when the weights hold no classifier (an ``fc`` of NaN, as in pool3-only
    files); ``no_logits_reason`` then says why the Inception Score is missing.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = inception_weights_path(weights_path)
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(self.weights_path)
        )
        self.has_classifier = bool(torch.isfinite(self.net.fc.weight).all())
        self.no_logits_reason = None if self.has_classifier else (
            f"the Inception weights '{self.weights_path}' have no classifier layer (fc is NaN); "
            f"the Inception Score needs the full {INCEPTION_FILE}"
        )

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict:
        pool3, logits = self.net(images)
        return {"pool3": pool3, "logits": logits if self.has_classifier else None}


# ---- images -----------------------------------------------------------------------------------
def to_uint8(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C): round((x + 1) 127.5)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def check_images(images: np.ndarray, source: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) is taken as grayscale."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ConfigError(
            f"{source} has dtype {images.dtype}: expected uint8 images (N, H, W, C) in 0..255, "
            "e.g. ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for x in [-1, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"{source} has shape {images.shape}: expected (N, H, W, C) with C = 1 or 3 (NHWC)")
    return images


def save_images_npz(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write uint8 NHWC images as ``images`` in an .npz (the layout FID tools read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=check_images(images))
    return path


def load_npz(path: str | os.PathLike) -> "np.ndarray | FeatureStats":
    """Images (key ``images``, else the first array) or statistics (keys ``mu`` and ``sigma``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"'{path}' does not exist: give an .npz of uint8 NHWC images or of mu/sigma statistics")
    with np.load(path) as f:
        if "mu" in f.files and "sigma" in f.files:
            features = f["features"] if "features" in f.files else None
            count = int(f["count"]) if "count" in f.files else 0
            return FeatureStats(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), count, features)
        if not f.files:
            raise ConfigError(f"'{path}' holds no arrays")
        return check_images(f["images"] if "images" in f.files else f[f.files[0]], source=f"'{path}'")


@torch.no_grad()
def generate_images(
    module, num_samples: int, batch_size: int, generator: torch.Generator, sampler=None, progress: bool = False
) -> np.ndarray:
    """``num_samples`` uint8 NHWC images from the module's EMA weights, in batches, through ``module.sample``."""
    batches = [batch_size] * (num_samples // batch_size) + ([num_samples % batch_size] if num_samples % batch_size else [])
    out = [
        to_uint8(module.sample(b, generator=generator, use_ema=True, sampler=sampler))
        for b in tqdm(batches, desc="sampling", disable=not progress)
    ]
    return np.concatenate(out) if out else np.zeros((0, *module.sample_shape[1:], module.sample_shape[0]), np.uint8)


@torch.no_grad()
def extract_features(
    images: np.ndarray, extractor: Extractor, batch_size: int = 100, device: str | torch.device = "cpu", progress: bool = False
) -> dict:
    """{"pool3": (N, D) float64, "logits": (N, K) float64 or None} of uint8 NHWC images."""
    images = check_images(images)
    pool3, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="inception", disable=not progress):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2)  # (B, C, H, W)
        out = extractor(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)  # grayscale -> RGB
        pool3.append(out["pool3"].double().cpu())
        logits.append(None if out.get("logits") is None else out["logits"].double().cpu())
    return {
        "pool3": torch.cat(pool3).numpy() if pool3 else np.zeros((0, 0)),
        "logits": None if not logits or logits[0] is None else torch.cat(logits).numpy(),
    }


# ---- statistics and distances ----------------------------------------------------------------
@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of features, their count, and a subset of the features for KID."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_features(cls, features: np.ndarray, kid_features: int | None = None, seed: int = 0) -> "FeatureStats":
        """Statistics of (N, D) features; keep all of them for KID, or a seeded subset of ``kid_features``."""
        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise ConfigError(f"FID needs at least 2 images, got {len(features)}")
        keep = features
        if kid_features is not None and kid_features < len(features):
            keep = features[np.random.RandomState(seed).choice(len(features), kid_features, replace=False)]
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), keep.astype(np.float32))

    @classmethod
    def from_moments(cls, total: np.ndarray, outer: np.ndarray, count: int, features=None) -> "FeatureStats":
        """From sum_i f_i (D,) and sum_i f_i f_i^T (D, D), as summed across processes."""
        mu = total / count
        return cls(mu, (outer - count * np.outer(mu, mu)) / (count - 1), count, features)

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write an .npz that ``load_npz`` (and pytorch-fid style tools: mu, sigma) read."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count)}
        if self.features is not None:
            arrays["features"] = self.features
        np.savez(tmp, **arrays)
        os.replace(tmp, path)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) in float64.

    tr (S1 S2)^{1/2} = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})): that matrix is symmetric PSD, so its
    eigenvalues are real and >= 0 up to rounding, also when S1, S2 are singular (fewer images than
    dimensions), where the sqrtm of the product used by pytorch-fid needs an epsilon fix.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T  # S1^{1/2}
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def kernel_inception_distance(
    features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float]:
    """Mean and std over ``subsets`` random subsets of the unbiased MMD^2 with the cubic polynomial kernel:
    torch-fidelity's KID, with its subset draws and default seed. ``subset_size`` is capped by both sets."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 images in each set, got {len(f1)} and {len(f2)}")
    rng = np.random.RandomState(seed)
    d = f1.shape[1]
    mmds = []
    for _ in range(subsets):
        x, y = f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmds.append(off_diagonal - 2 * k_xy.sum() / m**2)
    return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` consecutive chunks of exp(mean_x KL(p(y|x) || p(y))), p = softmax(logits)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    log_p = logits.log_softmax(dim=1)  # (N, K)
    n, splits = len(logits), max(1, min(splits, len(logits)))
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = chunk.exp().mean(0).log()  # log p(y) over the chunk
        scores.append((chunk.exp() * (chunk - log_marginal)).sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def check_metrics(names) -> list[str]:
    names = list(names)
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise ConfigError(f"metrics={names} is not allowed: {bad} unknown; choose from {list(METRICS)}")
    return names


def score_images(
    images: np.ndarray, reference: "FeatureStats", extractor: Extractor, metrics=("fid", "kid", "is"),
    kid_subsets: int = 100, kid_subset_size: int = 1000, batch_size: int = 100, device="cpu", progress: bool = False,
) -> dict:
    """FID, KID and IS of uint8 NHWC ``images`` against ``reference``; a metric that cannot be
    measured is None with a ``<name>_reason``."""
    metrics = check_metrics(metrics)
    features = extract_features(images, extractor, batch_size, device, progress)
    out: dict = {}
    if "fid" in metrics:
        stats = FeatureStats.from_features(features["pool3"])
        out["fid"] = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    if "kid" in metrics:
        if reference.features is None:
            out.update(kid_mean=None, kid_std=None, kid_reason="the reference holds mu/sigma only; KID needs its features")
        else:
            mean, std = kernel_inception_distance(features["pool3"], reference.features, kid_subsets, kid_subset_size)
            size = min(kid_subset_size, len(images), len(reference.features))
            out.update(kid_mean=mean, kid_std=std, kid_subset_size=size)
    if "is" in metrics:
        if features["logits"] is None:
            reason = getattr(extractor, "no_logits_reason", None) or "the feature extractor gives no class logits"
            out.update({"is": None, "is_std": None, "is_reason": reason})
        else:
            mean, std = inception_score(features["logits"])
            out.update({"is": mean, "is_std": std})
    return out


# ---- reference statistics of a training set ----------------------------------------------------
@dataclass
class Shard:
    """This process's part of a job over ``world`` processes; the defaults are a single process."""

    rank: int = 0
    world: int = 1
    all_sum: Callable[[Tensor], Tensor] = lambda t: t
    gather_rows: Callable[[Tensor, list], Tensor] = lambda t, counts: t  # concatenate each rank's first counts[r] rows

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Contiguous blocks of range(n): (starts, sizes) for every rank."""
        sizes = [n // self.world + (r < n % self.world) for r in range(self.world)]
        return [sum(sizes[:r]) for r in range(self.world)], sizes


def dataset_key(datamodule, count: int, split: str = "train") -> str:
    """``<dataset>-<split>-n<count>-<C>x<H>px``; folder datasets are named by their root (and its hash)."""
    build = datamodule.build_dataset
    name = getattr(getattr(build, "func", build), "__name__", type(build).__name__)
    root = datamodule.dataset_kwargs.get("root") or getattr(build, "keywords", {}).get("root")
    if name not in FIXED_DATASETS and root:
        root = Path(root).expanduser().absolute()
        name = f"{name}-{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    return f"{name}-{split}-n{count}-{datamodule.channels}x{datamodule.image_size}px"


def _dataset_uint8(dataset, indices: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """uint8 NHWC of ``dataset[i][0]`` (images in [-1, 1]) for the given indices."""
    parts = []
    for i in range(0, len(indices), chunk):
        parts.append(to_uint8(torch.stack([dataset[int(j)][0] for j in indices[i : i + chunk]])))
    return np.concatenate(parts)


def reference_statistics(
    datamodule, extractor: Extractor, count: int | None = None, cache_dir: str | os.PathLike | None = None,
    kid_features: int = 10000, batch_size: int = 100, device="cpu", progress: bool = False, shard: Shard = Shard(),
) -> FeatureStats:
    """Statistics of ``count`` training images (all when None; a seeded random subset otherwise),
    read from ``cache_dir/<dataset_key>.npz`` when there, else computed (split over ``shard``) and cached.

    Flipping (``hflip``) is not applied: the reference is the data as stored.
    """
    dataset = datamodule.build_dataset(**datamodule.dataset_kwargs)
    n = len(dataset) if count is None else int(count)
    if not 2 <= n <= len(dataset):
        raise ConfigError(
            f"reference_count={count!r} is not allowed: use 2 to {len(dataset)} (the training set's size) or null for all"
        )
    path = Path(cache_dir).expanduser() / f"{dataset_key(datamodule, n)}.npz" if cache_dir else None
    found = torch.tensor(float(path is not None and path.is_file()))
    if shard.all_sum(found).item() == shard.world:  # every rank sees the file: all read it
        return load_npz(path)
    order = np.random.RandomState(0).permutation(len(dataset))[:n] if n < len(dataset) else np.arange(n)
    starts, sizes = shard.split(n)
    mine = order[starts[shard.rank] : starts[shard.rank] + sizes[shard.rank]]
    features = extract_features(_dataset_uint8(dataset, mine), extractor, batch_size, device, progress)["pool3"]
    features = torch.from_numpy(features).to(device)  # (this rank's n, D), float64
    total = shard.all_sum(features.sum(0)).cpu().numpy()
    outer = shard.all_sum(features.T @ features).cpu().numpy()
    # the KID subset is order[:k]: the first rows of the first ranks' blocks
    k = min(kid_features, n)
    kid_counts = [int(np.clip(k - s, 0, z)) for s, z in zip(starts, sizes)]
    kid = shard.gather_rows(features[: kid_counts[shard.rank]], kid_counts).cpu().numpy().astype(np.float32)
    stats = FeatureStats.from_moments(total, outer, n, kid)
    if path is not None and shard.rank == 0:
        stats.save(path)
    return stats
