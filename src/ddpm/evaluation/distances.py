"""Sample quality from Inception features: FID, KID and IS, and scoring a set of images with them.

    FID  ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})    (Heusel et al. 2017), float64
    KID  unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over random subsets   (Binkowski et al. 2018)
    IS   exp E_x KL(p(y|x) || p(y)) averaged over splits           (Salimans et al. 2016)
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import Extractor, extract_features

INCEPTION_METRICS = ("fid", "kid", "is")
METRICS = (*INCEPTION_METRICS, "nll", "fd", "accuracy")  # fd, accuracy: the CPU classifier metrics (classifier_metrics.py)
# an autoencoder checkpoint (issue 15): reconstruction PSNR, and FD / FID / KID / accuracy of its reconstructions
AUTOENCODER_METRICS = ("psnr", "fd", "accuracy", "fid", "kid")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) in float64; mu (D,), sigma (D, D).

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
    torch-fidelity's KID, with its subset draws and default seed. Features (N1, D) and (N2, D);
    ``subset_size`` is capped by both sets."""
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
    """Mean and std over ``splits`` consecutive chunks of exp(mean_x KL(p(y|x) || p(y))), p = softmax(logits (N, K))."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    log_p = logits.log_softmax(dim=1)  # (N, K)
    n, splits = len(logits), max(1, min(splits, len(logits)))
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = chunk.exp().mean(0).log()  # log p(y) over the chunk
        scores.append((chunk.exp() * (chunk - log_marginal)).sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def check_metrics(names, autoencoder: bool = False) -> list[str]:
    """The metric names as a list, or a ConfigError naming the unknown ones; ``autoencoder``: of an
    autoencoder checkpoint (``AUTOENCODER_METRICS``), where psnr is measured and samples are not."""
    names = list(names)
    allowed, other = (AUTOENCODER_METRICS, METRICS) if autoencoder else (METRICS, AUTOENCODER_METRICS)
    bad = [n for n in names if n not in allowed]
    if bad and all(n in other for n in bad):  # a metric of the other kind of checkpoint
        what = ("this checkpoint is an autoencoder (task=autoencoder): it reconstructs, it does not sample"
                if autoencoder else "psnr measures an autoencoder's reconstructions: give the checkpoint of an "
                "autoencoder run (task=autoencoder)")
        raise ConfigError(f"metrics={names} is not allowed: {bad}; {what}; choose from {list(allowed)}")
    if bad:
        raise ConfigError(f"metrics={names} is not allowed: {bad} unknown; choose from {list(allowed)}")
    return names


def score_images(
    images: np.ndarray, reference: FeatureStats, extractor: Extractor, metrics=("fid", "kid", "is"),
    kid_subsets: int = 100, kid_subset_size: int = 1000, batch_size: int = 100, device="cpu", progress: bool = False,
) -> dict:
    """FID, KID and IS of uint8 (N, H, W, C) ``images`` against ``reference``; a metric that cannot be
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
