"""Images and statistics in .npz files: uint8 (N, H, W, C) images under ``images`` (the layout FID
tools read), or ``mu``/``sigma`` statistics as pytorch-fid and TTUR write them."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ddpm.errors import ConfigError
from ddpm.evaluation.feature_stats import FeatureStats


def check_layout(shape: tuple, source: str = "images") -> None:
    """A ConfigError unless ``shape`` is (N, H, W) or (N, H, W, C) with C in {1, 3} and H not in {1, 3}.

    An axis 1 of 1 or 3 reads as channels: ``(N, 3, 32, 32)`` is NCHW and refused with how to
    transpose it, and ``(N, 3, 8, 3)`` (NCHW 8x3 images, or NHWC images 3 pixels high) is refused
    as ambiguous rather than scored as the wrong images.
    """
    if len(shape) == 3:
        return
    if len(shape) != 4 or (shape[-1] not in (1, 3) and shape[1] not in (1, 3)):
        raise ConfigError(f"{source} has shape {tuple(shape)}: expected (N, H, W, C) with C = 1 or 3 (NHWC)")
    if shape[1] in (1, 3) and shape[-1] not in (1, 3):
        raise ConfigError(f"{source} has shape {tuple(shape)}, channels first (NCHW): expected NHWC; "
                          "transpose it with images.transpose(0, 2, 3, 1)")
    if shape[1] in (1, 3):
        raise ConfigError(f"{source} has shape {tuple(shape)}, which is ambiguous: NCHW images of "
                          f"{shape[2]}x{shape[3]} or NHWC images of {shape[1]}x{shape[2]}; give NHWC images "
                          "(N, H, W, C) at least 4 pixels high")


def check_dtype(dtype: np.dtype, source: str = "images") -> None:
    if dtype != np.uint8:
        raise ConfigError(
            f"{source} has dtype {dtype}: expected uint8 images (N, H, W, C) in 0..255, "
            "e.g. ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for x in [-1, 1]"
        )


def check_images(images: np.ndarray, source: str = "images") -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3}; (N, H, W) is taken as grayscale (layout: ``check_layout``)."""
    images = np.asarray(images)
    check_dtype(images.dtype, source)
    check_layout(images.shape, source)
    return images[..., None] if images.ndim == 3 else images


def save_images_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write uint8 NHWC images as ``images`` in an .npz (the layout FID tools read), and the class
    label of each (int64 (N,)) as ``labels`` when given (samples of a class-conditional model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = check_images(images)
    arrays = {"images": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ConfigError(f"labels of shape {labels.shape} for {len(images)} images: expected ({len(images)},)")
        arrays["labels"] = labels
    np.savez(path, **arrays)
    return path


def _open_npz(path: Path):
    """``np.load(path)`` of an .npz, or a ConfigError naming the file and what it holds instead."""
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # pickled data, not a zip, truncated
        why = ("neither a zip of .npy arrays nor an .npy; reading it would unpickle it, refused" if "pickle" in str(e)
               else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        raise ConfigError(f"'{path}' is not an .npz of arrays ({why}): give one written by np.savez") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ConfigError(f"'{path}' is a single .npy array, not an .npz: save it with np.savez(path, images=...)")
    return f


def _array(f, key: str, path: Path) -> np.ndarray:
    try:
        return f[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays need pickle; damaged members
        reason = "an object array (pickled Python objects, refused)" if "allow_pickle" in str(e) else type(e).__name__
        raise ConfigError(f"'{path}' array {key!r} cannot be read: {reason}; store uint8 images "
                          "(N, H, W, C) or float mu/sigma") from e


def load_npz(path: str | os.PathLike) -> np.ndarray | FeatureStats:
    """Images (key ``images``, else the first array) or statistics (keys ``mu`` and ``sigma``).

    Never unpickles: an object array, a file that is not an .npz, or a damaged one is a ConfigError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"'{path}' does not exist: give an .npz of uint8 NHWC images or of mu/sigma statistics")
    with _open_npz(path) as f:
        if "mu" in f.files and "sigma" in f.files:
            features = _array(f, "features", path) if "features" in f.files else None
            count = int(_array(f, "count", path)) if "count" in f.files else 0
            mu, sigma = _array(f, "mu", path), _array(f, "sigma", path)
            return FeatureStats(mu.astype(np.float64), sigma.astype(np.float64), count, features)
        if not f.files:
            raise ConfigError(f"'{path}' holds no arrays")
        key = "images" if "images" in f.files else f.files[0]
        return check_images(_array(f, key, path), source=f"'{path}'")


def check_npz(path: str | os.PathLike) -> None:
    """What ``load_npz`` would refuse about the file at ``path``, from the array headers alone (no
    pixel is read): not an .npz, object arrays, images of another dtype or layout."""
    path = Path(path).expanduser()
    with _open_npz(path) as f:
        if "mu" in f.files and "sigma" in f.files or not f.files:
            return
        key = "images" if "images" in f.files else f.files[0]
        try:
            with f.zip.open(f"{key}.npy") as member:
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(member)]
                shape, _, dtype = read_header(member)
        except Exception:  # an unusual member: load_npz reads it in full and says what is wrong
            return
        source = f"'{path}'"
        if dtype.hasobject:
            raise ConfigError(f"{source} array {key!r} cannot be read: an object array (pickled Python objects, "
                              "refused); store uint8 images (N, H, W, C) or float mu/sigma")
        check_dtype(dtype, source)
        check_layout(shape, source)
