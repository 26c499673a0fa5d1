"""A small classifier per dataset, trained here on its training split: the feature network of the CPU
quality metrics (``ddpm.evaluation.classifier_metrics``: FD, accuracy, per-class FD).

One recipe per dataset (``RECIPES``). The classifier is trained once, seeded and deterministic on the
CPU, and cached as ``<cache_dir>/<dataset>-<split>-<C>x<H>px-<version>.pt`` (written atomically, read
with ``torch.load(weights_only=True)``): its weights, its held-out test accuracy and the feature
statistics the metrics compare samples with (all the training split; each class; the test split, for
the data floor), so scoring needs only one forward pass over the samples. Datasets without a test
split (the 8x8 digits) hold out a seeded, stratified fraction for the classifier's test accuracy and
the floor; the classifier trains on the rest, the diffusion dataset itself is unchanged.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddpm.data.images import DataError, TensorImageDataset
from ddpm.data.pixels import from_uint8, to_uint8
from ddpm.errors import ConfigError
from ddpm.evaluation.distances import frechet_distance
from ddpm.evaluation.feature_stats import FeatureStats

VERSION = "v2"  # part of the cache file name: bump when the network or the recipe changes


@dataclass(frozen=True)
class Recipe:
    """How the classifier of one dataset is built and trained (``holdout``: the fraction of the training
    split held out for testing when the dataset has no test split; None: use its test split)."""

    width: int = 32
    feature_dim: int = 128
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    holdout: float | None = None
    shift: int = 2  # random translations of up to this many pixels while training (0: none)
    batchnorm: bool = False  # batch normalisation after each convolution (Ioffe & Szegedy 2015)


RECIPES = {
    "digits": Recipe(width=32, feature_dim=64, epochs=40, batch_size=128, lr=4e-3, holdout=0.2, shift=1),
    "mnist": Recipe(width=16, feature_dim=128, epochs=5, batch_size=128, lr=3e-3, shift=1, batchnorm=True),
    "fashion_mnist": Recipe(width=16, feature_dim=128, epochs=8, batch_size=128, lr=3e-3, shift=1, batchnorm=True),
    "cifar10": Recipe(width=64, feature_dim=256, epochs=20, batch_size=128, lr=2e-3, batchnorm=True),
}


@contextmanager
def one_thread():
    """Run torch on one CPU thread inside: the same weights and features on any core count (reduction
    order), and no thread oversubscription on a shared machine, where these small layers gain nothing."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_cache_dir() -> Path:
    """``$DDPM_CLASSIFIER_CACHE``, else ``~/.cache/ddpm/classifier``."""
    return Path(os.environ.get("DDPM_CLASSIFIER_CACHE", "~/.cache/ddpm/classifier")).expanduser()


class Classifier(nn.Module):
    """A small CNN: two stages of 3x3 convolutions and 2x2 max-pooling (the second only on images of
    at least 16 px), global average pooling, a ``feature_dim`` ReLU layer (the penultimate features of
    the metrics) and a linear layer to ``num_classes`` logits; with ``batchnorm``, batch normalisation
    after each convolution. Input (N, C, H, W) in [-1, 1]."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 128,
                 batchnorm: bool = False):
        super().__init__()
        self.config = dict(channels=channels, image_size=image_size, num_classes=num_classes, width=width,
                           feature_dim=feature_dim, batchnorm=batchnorm)
        pool2 = nn.MaxPool2d(2) if image_size >= 16 else nn.Identity()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if batchnorm else []), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(channels, width), *conv(width, width), nn.MaxPool2d(2),
            *conv(width, 2 * width), *conv(2 * width, 2 * width), pool2,
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, C, H, W) -> (features (N, feature_dim), logits (N, num_classes))."""
        features = self.body(x)
        return features, self.head(features)


@dataclass
class DomainClassifier:
    """A trained classifier with what the metrics compare against: ``reference`` (features of the whole
    training split), ``class_reference`` (one FeatureStats per class), ``test`` (the held-out split:
    the data floor is FD(test, reference)), and ``info`` (test accuracy, counts, train seconds, path)."""

    net: Classifier
    reference: FeatureStats
    class_reference: list[FeatureStats]
    test: FeatureStats
    info: dict

    @property
    def num_classes(self) -> int:
        return self.net.config["num_classes"]

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C) images -> (features (N, D) float64, logits (N, K) float64), on the CPU."""
        images = np.asarray(images)
        expected = (self.net.config["image_size"],) * 2 + (self.net.config["channels"],)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ConfigError(f"images of shape {images.shape[1:]} cannot be scored by the {self.info['dataset']} "
                              f"classifier, which takes (H, W, C) = {expected}")
        self.net.eval()
        feats, logits = [], []
        with one_thread():
            for i in range(0, len(images), batch_size):
                x = from_uint8(images[i : i + batch_size]).permute(0, 3, 1, 2)  # (B, C, H, W) in [-1, 1]
                f, z = self.net(x)
                feats.append(f.double().numpy())
                logits.append(z.double().numpy())
        d, k = self.net.config["feature_dim"], self.num_classes
        return (np.concatenate(feats) if feats else np.zeros((0, d)), np.concatenate(logits) if logits else np.zeros((0, k)))


def recipe_for(name: str) -> Recipe:
    """The recipe of dataset ``name`` (``<name>-heldout<N>``: of ``name``), or a ConfigError naming the datasets
    that have one."""
    name = name.split("-heldout")[0]
    if name not in RECIPES:
        raise ConfigError(f"no classifier for dataset {name!r}: the fd/accuracy metrics know {sorted(RECIPES)}")
    return RECIPES[name]


def dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """A labelled image dataset as (uint8 (N, H, W, C), int64 labels (N,)), quantised exactly as samples
    are (``to_uint8`` of the [-1, 1] images; the digits' 0..16 levels become 0..255)."""
    if isinstance(dataset, TensorImageDataset):
        images = to_uint8(from_uint8(dataset.images, dataset.max_value))
        return images, dataset.labels.long().numpy()
    pairs = [dataset[i] for i in range(len(dataset))]
    return to_uint8(torch.stack([p[0] for p in pairs])), np.asarray([int(p[1]) for p in pairs], np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): ``round(fraction * n_k)`` seeded random images of each class k held out."""
    rng = np.random.RandomState(seed)
    test = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        test.extend(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    test = np.sort(np.asarray(test, np.int64))
    return np.setdiff1d(np.arange(len(labels)), test), test


def splits(datamodule, recipe: Recipe) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``all`` (the diffusion training split), ``fit`` (what the classifier trains on) and ``test``,
    each as (uint8 NHWC images, labels)."""
    every = dataset_arrays(datamodule.build_dataset(**datamodule.dataset_kwargs))
    if recipe.holdout is None:
        try:
            test = dataset_arrays(datamodule.test_dataset())
        except DataError as e:
            raise ConfigError(f"the {datamodule.dataset_name} classifier needs a test split: {e}") from e
        return {"all": every, "fit": every, "test": test}
    fit, test = stratified_holdout(every[1], recipe.holdout)
    return {"all": every, "fit": (every[0][fit], every[1][fit]), "test": (every[0][test], every[1][test])}


def _shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of x (B, C, H, W) translated by a random integer offset in [-max_shift, max_shift]^2
    (zero-padded with -1, the background); one slice per distinct offset."""
    if max_shift == 0:
        return x
    _, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, (2 * max_shift + 1) ** 2, (len(x),), generator=generator)
    out = torch.empty_like(x)
    for o in offsets.unique().tolist():
        dy, dx = divmod(o, 2 * max_shift + 1)
        rows = offsets == o
        out[rows] = padded[rows, :, dy : dy + h, dx : dx + w]
    return out


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe, seed: int = 0,
                     progress: bool = False) -> Classifier:
    """Adam with a one-cycle learning rate, cross-entropy, ``recipe.epochs`` passes over uint8 (N, H, W, C)
    ``images``; seeded (weights, order, shifts), on one CPU thread: deterministic."""
    with one_thread():
        return _train(images, labels, num_classes, recipe, seed, progress)


def _train(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: Recipe, seed: int, progress: bool):
    torch.manual_seed(seed)
    net = Classifier(images.shape[3], images.shape[1], num_classes, recipe.width, recipe.feature_dim, recipe.batchnorm)
    x = from_uint8(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) in [-1, 1]
    y = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    steps = recipe.epochs * (len(x) // recipe.batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=max(steps, 1), pct_start=0.15)
    net.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(len(x) // recipe.batch_size):
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            _, logits = net(_shift(x[idx], recipe.shift, generator))
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            print(f"classifier epoch {epoch + 1}/{recipe.epochs}: loss {loss.item():.4f}", flush=True)
    return net.eval()


def cache_path(datamodule, cache_dir: str | os.PathLike | None) -> Path:
    """``<cache_dir>/<dataset>-<split>-<C>x<H>px-<VERSION>.pt``; split is ``train`` or e.g. ``train80``
    (the classifier's share of a training split with a held-out fraction)."""
    recipe = recipe_for(datamodule.dataset_name)
    split = "train" if recipe.holdout is None else f"train{round(100 * (1 - recipe.holdout))}"
    name = f"{datamodule.dataset_name}-{split}-{datamodule.channels}x{datamodule.image_size}px-{VERSION}.pt"
    return Path(cache_dir).expanduser() / name if cache_dir else default_cache_dir() / name


def _stats_dict(s: FeatureStats) -> dict:
    return {"mu": torch.from_numpy(s.mu), "sigma": torch.from_numpy(s.sigma), "count": s.count}


def _stats(d: dict) -> FeatureStats:
    return FeatureStats(d["mu"].numpy(), d["sigma"].numpy(), int(d["count"]))


def build_classifier(datamodule, seed: int = 0, progress: bool = False) -> tuple[DomainClassifier, dict]:
    """Train the classifier of ``datamodule``'s dataset and measure its references; (classifier, the
    payload ``load_or_train`` caches)."""
    recipe = recipe_for(datamodule.dataset_name)
    data = splits(datamodule, recipe)
    num_classes = int(max(data["all"][1].max(), data["test"][1].max())) + 1
    start = time.perf_counter()
    net = train_classifier(*data["fit"], num_classes, recipe, seed, progress)
    seconds = time.perf_counter() - start
    shell = DomainClassifier(net, None, [], None, {"dataset": datamodule.dataset_name})
    feats, _ = shell.features(data["all"][0])
    test_feats, test_logits = shell.features(data["test"][0])
    labels = data["all"][1]
    reference, test = FeatureStats.from_features(feats), FeatureStats.from_features(test_feats)
    per_class = [FeatureStats.from_features(feats[labels == k]) for k in range(num_classes)]
    info = dict(dataset=datamodule.dataset_name, version=VERSION, seed=seed, train_seconds=seconds,
                test_accuracy=float((test_logits.argmax(1) == data["test"][1]).mean()),
                fit_count=len(data["fit"][1]), test_count=len(data["test"][1]), reference_count=len(labels),
                holdout=recipe.holdout, floor_fd=frechet_distance(test.mu, test.sigma, reference.mu, reference.sigma))
    payload = dict(state_dict=net.state_dict(), config=net.config, info=info, reference=_stats_dict(reference),
                   test=_stats_dict(test), classes=[_stats_dict(s) for s in per_class])
    return DomainClassifier(net, reference, per_class, test, info), payload


def load_or_train(datamodule, cache_dir: str | os.PathLike | None = None, progress: bool = False) -> DomainClassifier:
    """The cached classifier of ``datamodule``'s dataset, trained (and cached atomically) when absent.

    Prints its held-out test accuracy when it trains."""
    path = cache_path(datamodule, cache_dir)
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        net = Classifier(**payload["config"])
        net.load_state_dict(payload["state_dict"])
        info = {**payload["info"], "path": str(path)}
        return DomainClassifier(net.eval(), _stats(payload["reference"]), [_stats(c) for c in payload["classes"]],
                                _stats(payload["test"]), info)
    classifier, payload = build_classifier(datamodule, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    classifier.info["path"] = str(path)
    info = classifier.info
    print(f"classifier for {info['dataset']}: test accuracy {info['test_accuracy']:.4f} on {info['test_count']} "
          f"held-out images, trained in {info['train_seconds']:.1f} s; data floor FD {info['floor_fd']:.3f}; "
          f"cached at {path}", flush=True)
    return classifier
