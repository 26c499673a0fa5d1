"""Image datasets: the builders behind ``conf/data/*.yaml`` and the in-memory and folder datasets.

Every builder returns a map-style dataset of ``(image, label)`` pairs whose images are float
tensors of shape ``(C, H, W)`` scaled to ``[-1, 1]``. Each ``conf/data/*.yaml`` is one
``ImageDataModule`` call whose ``dataset`` is a Hydra partial of one builder, so the dataset is
chosen by picking the file. Missing or unreadable data raises :class:`DataError` with a one-line
message that names the path and how to fix it.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from ddpm.data.pixels import from_uint8
from ddpm.errors import ConfigError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class DataError(ConfigError):
    """Data that is missing, unreadable or does not match the config (one-line message).

    A :class:`~ddpm.errors.ConfigError` (hence a ``ValueError``), so the entry points report it
    as a single line.
    """


class TensorImageDataset(Dataset):
    """Images held in memory as integers ``0..max_value``, served as floats in ``[-1, 1]``.

    ``images`` is an ``(N, C, H, W)`` tensor (kept as uint8 to save memory) and ``labels`` an
    ``(N,)`` tensor of class indices.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_value: float = 255.0):
        if images.ndim != 4 or len(images) != len(labels):
            shapes = f"{tuple(images.shape)} and {len(labels)}"
            raise ValueError(f"expected (N, C, H, W) images and N labels, got {shapes}")
        self.images, self.labels, self.max_value = images, labels, float(max_value)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = from_uint8(self.images[index], self.max_value)
        return image, int(self.labels[index])


class RandomHFlip(Dataset):
    """Wraps a dataset and mirrors images left-right.

    ``self[index]`` mirrors with probability ``p``, freshly per draw; ``self[(index, flip)]`` mirrors
    iff ``flip``: how the training loader (:class:`~ddpm.data.resumable_loader.LoaderBatches`) passes
    flips it decided from (seed, rank, epoch, batch), so that a resumed run draws the same ones.
    """

    def __init__(self, dataset: Dataset, p: float = 0.5):
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, bool]):
        index, flip = key if isinstance(key, tuple) else (key, None)
        image, label = self.dataset[index]
        if flip is None:
            flip = torch.rand(()).item() < self.p
        if flip:
            image = image.flip(-1)
        return image, label


def _root(root: str | Path) -> Path:
    """The data root as an absolute path (``~`` expanded), so error messages are unambiguous."""
    return Path(root).expanduser().absolute()


def no_test_split(name: str) -> DataError:
    return DataError(f"data {name!r} has no test split (metrics=[nll] needs one: mnist, fashion_mnist, cifar10 have it)")


def digits(train: bool = True, test_images: int = 0) -> TensorImageDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits (shipped with the package, no download): (1, 8, 8).

    ``test_images``: hold out the last N images as the test split (``train=False``; e.g. for
    ``metrics=[nll]``) and train on the others; 0 (the default): all 1,797 train, no test split.
    """
    if isinstance(test_images, bool) or not isinstance(test_images, int) or not 0 <= test_images < 1797:
        raise DataError(f"data.dataset.test_images={test_images!r} is not allowed: use 0 (no test split) or a "
                        "number of held-out images below 1797, e.g. 297")
    if not train and test_images == 0:
        raise DataError("data 'digits' has no test split unless some images are held out: set "
                        "data.dataset.test_images=N (e.g. 297; training then uses the other 1797 - N)")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8), pixel values 0..16
    labels = torch.as_tensor(bunch.target)
    cut = len(images) - test_images
    kept = slice(0, cut) if train else slice(cut, None)
    return TensorImageDataset(images[kept], labels[kept], max_value=16)


def _read_idx(path: Path) -> torch.Tensor:
    """Reads an MNIST-style idx file of unsigned bytes, gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise DataError(f"'{path}' is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_like(cls: type, root: str | Path, train: bool, download: bool) -> TensorImageDataset:
    """MNIST or Fashion-MNIST from ``root/<cls.__name__>/raw`` in torchvision's layout.

    The idx files are read directly, packed (``.gz``) or unpacked: torchvision itself only reads
    unpacked ones, which fails on a read-only root that holds just the downloaded ``.gz`` files.
    """
    root = _root(root)
    raw = root / cls.__name__ / "raw"
    split = "train" if train else "t10k"

    def find(name: str) -> Path | None:
        return next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)

    names = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
    if download and not all(map(find, names)):
        cls(str(root), train=train, download=True)
    files = [find(name) for name in names]
    if not all(files):
        raise DataError(
            f"{cls.__name__} not found under '{root}': pass data.root=DIR that holds "
            f"{cls.__name__}/raw, or data.download=true to fetch it"
        )
    images, labels = (_read_idx(f) for f in files)
    return TensorImageDataset(images.unsqueeze(1), labels.long(), max_value=255)


def mnist(root: str | Path, train: bool = True, download: bool = False) -> TensorImageDataset:
    """MNIST digits from ``root/MNIST/raw`` (torchvision layout): (1, 28, 28), 60,000 train images."""
    return _mnist_like(torchvision.datasets.MNIST, root, train, download)


def fashion_mnist(root: str | Path, train: bool = True, download: bool = False) -> TensorImageDataset:
    """Fashion-MNIST from ``root/FashionMNIST/raw`` (torchvision layout): (1, 28, 28), 60,000 train images."""
    return _mnist_like(torchvision.datasets.FashionMNIST, root, train, download)


def cifar10(root: str | Path, train: bool = True, download: bool = False) -> TensorImageDataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision layout, md5-checked): (3, 32, 32)."""
    root = _root(root)
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as e:
        if download:
            raise
        raise DataError(
            f"CIFAR-10 not found (or corrupt) under '{root}': pass data.root=DIR that holds "
            f"cifar-10-batches-py, or data.download=true to fetch it"
        ) from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
    return TensorImageDataset(images, torch.as_tensor(ds.targets), max_value=255)


def synthetic(
    num_images: int = 50_000, channels: int = 3, image_size: int = 32, seed: int = 0, train: bool = True
) -> TensorImageDataset:
    """Uniformly random uint8 images (CIFAR-10-shaped by default) with random labels 0..9.

    For throughput measurements where the real data is absent: same shapes, dtype and sizes as
    the real dataset, so the data pipeline costs what it costs on real data. Nothing to learn.
    """
    if not train:
        raise no_test_split("synthetic")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, channels, image_size, image_size), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.randint(0, 10, (num_images,), generator=g), max_value=255)


def _decodes(path: Path) -> bool:
    """Whether PIL can fully decode ``path``; warns, naming the file, when it cannot."""
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: Image.verify() misses e.g. truncated JPEG data
        return True
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        warnings.warn(f"skipping undecodable image '{path}': {e}", stacklevel=3)
        return False


# PIL modes of single-channel images deeper than 8 bits -> the value of full scale. PIL opens a 16-bit
# grayscale PNG as "I;16" (older versions: "I", 32-bit ints holding 0..65535); float TIFFs as "F".
FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def unit_float_image(img: Image.Image, full_scale: float, path: Path) -> Image.Image:
    """A single-channel image deeper than 8 bits as a PIL float image (mode ``F``) in [0, 1]:
    its values divided by ``full_scale``; values outside [0, full_scale] are a DataError naming the file."""
    values = np.asarray(img, dtype=np.float64)  # (H, W)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(values).all() and low >= 0 and high <= full_scale):
        what = "float pixels are taken as 0..1" if full_scale == 1 else f"{img.mode} pixels are taken as 0..65535"
        raise DataError(f"image '{path}' has values from {low:g} to {high:g}: {what}; rescale the file")
    return Image.fromarray((values / full_scale).astype(np.float32))


class ImageFolderDataset(Dataset):
    """Every image file under ``root`` (recursively), as a square ``(channels, image_size, image_size)``.

    Files are matched by extension (:data:`IMAGE_EXTENSIONS`, any case; hidden files such as
    macOS ``._*`` are ignored). Each image is converted to RGB (``channels=3``) or grayscale
    (``channels=1``), its shorter side resized to ``image_size`` and centre-cropped. The label is
    the index of the file's directory (relative to ``root``) in sorted order.

    A file that cannot be decoded raises :class:`DataError` naming it when it is first read. With
    ``skip_bad_files=True`` every file is instead decoded once here, up front, and the bad ones are
    dropped with a warning naming each (sound, but it reads the whole folder once).
    """

    def __init__(self, root: str | Path, image_size: int, channels: int = 3, skip_bad_files: bool = False):
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        root = _root(root)
        exts = ", ".join(IMAGE_EXTENSIONS)
        if not root.is_dir():
            raise DataError(f"image folder '{root}' does not exist: pass data.root=DIR holding {exts} images")
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if skip_bad_files:
            files = [p for p in files if _decodes(p)]
        if not files:
            readable = "decodable " if skip_bad_files else ""
            raise DataError(f"no {readable}images under '{root}' (searched recursively for {exts})")
        dirs = sorted({p.parent for p in files})
        self.classes = [d.relative_to(root).as_posix() for d in dirs]
        index = {d: i for i, d in enumerate(dirs)}
        self.files, self.labels = files, [index[p.parent] for p in files]
        self.image_size, self.mode = image_size, "RGB" if channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Image ``index`` as floats in [-1, 1], ``(channels, image_size, image_size)``, and its label.

        8-bit files: ``k * 2 / 255 - 1``. 16-bit grayscale (PIL modes ``I;16*``, and ``I`` as PIL
        opens 16-bit PNGs): ``k * 2 / 65535 - 1``. Float files (TIFF mode ``F``) are taken as [0, 1]:
        ``x * 2 - 1``; a float pixel outside [0, 1] is a DataError rather than clipped. These are
        resized as floats, not squashed to 8 bits first; grayscale becomes RGB by repetition.
        """
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                full_range = FULL_SCALE.get(img.mode)
                img = img.convert(self.mode) if full_range is None else unit_float_image(img, full_range, path)
        except DataError:
            raise
        except Exception as e:
            hint = "set data.dataset.skip_bad_files=true to skip such files"
            raise DataError(f"cannot decode image '{path}': {e} ({hint})") from e
        img = TF.center_crop(TF.resize(img, self.image_size), self.image_size)
        if full_range is None:
            return from_uint8(TF.pil_to_tensor(img)), self.labels[index]
        image = TF.pil_to_tensor(img) * 2.0 - 1.0  # (1, H, W) float32 in [-1, 1]
        return image.expand(len(self.mode), -1, -1).contiguous(), self.labels[index]  # "RGB": 3 channels


def image_folder(
    root: str | Path, image_size: int, channels: int = 3, skip_bad_files: bool = False, train: bool = True
) -> ImageFolderDataset:
    """Builder for :class:`ImageFolderDataset` (for symmetry with the other builders); one folder, no test split."""
    if not train:
        raise no_test_split("image_folder")
    return ImageFolderDataset(root, image_size, channels, skip_bad_files)
