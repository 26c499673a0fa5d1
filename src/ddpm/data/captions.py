"""Captioned datasets: a text prompt per training image, as strings or as precomputed embeddings.

Three sources (``data.captions``, see :class:`~ddpm.data.datamodule.ImageDataModule`):

``templates``
    A labelled dataset's captions made from its labels: each time an image is served, one template
    (``"a handwritten {name}"``, ``"the digit {index}, {strokes}"``) is drawn at random and filled
    in with the class name, the label and (in-memory datasets) "thin strokes" / "thick strokes": the
    image's ink up to / above its class's median (:func:`thick_strokes`). The draw is made per batch from a generator seeded by (seed, rank,
    epoch, batch number), as the flips are (:meth:`ResumableBatches.flips`), so a resumed run sees
    the captions of the uninterrupted one, on the device path and through a DataLoader alike.
``sidecar``
    An image folder's captions read from a ``.txt`` file beside each image with the same stem
    (``cat.png`` + ``cat.txt``), the common layout of text-image datasets.
``embeddings``
    Captions encoded elsewhere (e.g. by CLIP on another machine), read from an ``.npz`` holding
    ``embeddings`` (N, L, D) float, ``mask`` (N, L) bool (True: a real token), ``null_embeddings``
    (L, D) and ``null_mask`` (L,) (the empty prompt ``""``, for classifier-free guidance). Row i
    belongs to dataset index i: for a folder, the i-th image file in sorted path order
    (``ImageFolderDataset.files``). :func:`write_embeddings` writes such a file from any encoder.

Batches: ``(images (B, C, H, W), captions list[str] of length B)`` for the first two;
``(images, [embeddings (B, L, D) float32, mask (B, L) bool])`` for the third. This layer returns
plain tensors and strings; the training module turns them into conditions.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import DataError, ImageFolderDataset, TensorImageDataset

TEMPLATE_FIELDS = ("name", "index", "strokes")
STROKES = ("thin strokes", "thick strokes")  # {strokes}: ink at most / above the class median
EMBEDDING_KEYS = ("embeddings", "mask", "null_embeddings", "null_mask")
_CAPTION_STREAM = 0x5EED_CA97  # tags the caption draws apart from the flips' generator seeds


def template_fields(template: str) -> set[str]:
    """The names of the fields of a format string (``"the digit {index}"`` -> {"index"})."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def check_templates(templates: Sequence[str] | None) -> list[str]:
    """``templates`` as a list of strings whose only fields are ``{name}``, ``{index}``, ``{strokes}``; else a DataError."""
    if not templates or isinstance(templates, str):
        raise DataError(f"data.caption_templates={templates!r} is not allowed: give a non-empty list of "
                        "strings such as ['a handwritten {name}', 'the digit {index}']")
    for template in templates:
        try:
            fields = template_fields(str(template))
        except ValueError as e:
            raise DataError(f"data.caption_templates entry {template!r} is not a format string: {e}") from e
        if not fields <= set(TEMPLATE_FIELDS):
            raise DataError(f"data.caption_templates entry {template!r} uses {sorted(fields - set(TEMPLATE_FIELDS))}: "
                            "only {name} (class name), {index} (label) and {strokes} (thin/thick) are filled in")
    return [str(t) for t in templates]


def thick_strokes(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether image i holds more ink than the median image of its class (``images``
    (N, C, H, W), ink = mean pixel value, white strokes on black as in MNIST and digits)."""
    ink = images.double().mean((1, 2, 3))  # (N,)
    thick = torch.zeros(len(ink), dtype=torch.bool)
    for label in labels.unique():
        members = labels == label
        thick[members] = ink[members] > torch.quantile(ink[members], 0.5)  # the median, halves averaged
    return thick


class CaptionTemplates:
    """Captions of class labels from templates: ``table[row][k]`` is template k filled in with
    ``name=class_names[label]``, ``index=label`` and, when a template uses ``{strokes}``,
    ``strokes=STROKES[thick]``; the row of an image is its *caption label* (:meth:`caption_labels`):
    its label, or ``2 * label + thick`` with strokes.

    Args:
        templates: format strings with the fields ``{name}``, ``{index}``, ``{strokes}``.
        class_names: one name per label 0..K-1.
    """

    def __init__(self, templates: Sequence[str], class_names: Sequence[str]):
        self.templates = check_templates(templates)
        if not class_names or isinstance(class_names, str):
            raise DataError(f"data.class_names={class_names!r} is not allowed: give one name per class label")
        self.class_names = [str(n) for n in class_names]
        self.uses_strokes = any("strokes" in template_fields(t) for t in self.templates)
        strokes = STROKES if self.uses_strokes else (None,)
        self.table = [[t.format(name=name, index=label, strokes=s) for t in self.templates]
                      for label, name in enumerate(self.class_names) for s in strokes]

    def caption_labels(self, dataset) -> torch.Tensor:
        """(N,) the table row of each image of ``dataset``: its label, or with ``{strokes}``
        ``2 * label + thick`` (:func:`thick_strokes`, which needs the images in memory)."""
        labels = torch.as_tensor(dataset.labels).long()
        self.check_labels(labels)
        if not self.uses_strokes:
            return labels
        if not isinstance(getattr(dataset, "images", None), torch.Tensor):
            raise DataError(f"data.caption_templates uses {{strokes}}, which needs an in-memory dataset "
                            f"(digits, MNIST), not {type(dataset).__name__}: drop {{strokes}} from the templates")
        return 2 * labels + thick_strokes(dataset.images, labels)

    def check_labels(self, labels: Sequence[int] | torch.Tensor) -> None:
        """A DataError unless every label has a class name."""
        labels = torch.as_tensor(labels)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
            raise DataError(f"data.class_names has {len(self.class_names)} names but the dataset has labels "
                            f"{int(labels.min())}..{int(labels.max())}: give one name per label")

    def captions(self, labels: Sequence[int], choices: Sequence[int]) -> list[str]:
        """Caption i is template ``choices[i]`` of row ``labels[i]`` (a caption label)."""
        return [self.table[y][k] for y, k in zip(labels, choices)]

    def draw(self, labels: torch.Tensor, key: tuple[int, ...]) -> list[str]:
        """One caption per caption label in ``labels`` (B,), templates drawn uniformly from a CPU generator
        seeded by the ints in ``key`` (e.g. seed, rank, epoch, batch number): the same key, the same captions."""
        generator = torch.Generator().manual_seed(hash((*key, _CAPTION_STREAM)) % 2**63)  # int tuples hash stably
        choices = torch.randint(len(self.templates), (len(labels),), generator=generator)
        return self.captions(labels.tolist(), choices.tolist())


class TemplateCaptionBatches:
    """Wraps the training batches of a labelled dataset (:class:`DeviceBatches` or :class:`LoaderBatches`,
    yielding ``(images, labels (B,))``) and yields ``(images, captions list[str])`` instead.

    The templates of batch i of epoch e are drawn from the key (seed, rank, e, i), read from the inner
    batches' ``state_dict`` after each batch, so resuming mid-epoch repeats the uninterrupted run's
    captions. The strings are made on the host from host labels: give it :class:`HostOrderDeviceBatches`
    rather than :class:`DeviceBatches`, whose labels live on the device (reading them waits for the GPU).
    ``len``, ``state_dict`` and ``load_state_dict`` (Lightning's resumable-loader protocol) and any
    other attribute are the inner batches'.
    """

    def __init__(self, batches, templates: CaptionTemplates, seed: int = 0, rank: int = 0):
        self.inner, self.templates, self.seed, self.rank = batches, templates, seed, rank

    def __len__(self) -> int:
        return len(self.inner)

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __iter__(self):
        for images, labels in self.inner:
            position = self.inner.state_dict()  # {"epoch": e, "batch": i + 1} once batch i is served
            key = (self.seed, self.rank, position["epoch"], position["batch"] - 1)
            yield images, self.templates.draw(labels, key)


class HostOrderDeviceBatches(DeviceBatches):
    """:class:`DeviceBatches` that draw each epoch's order on the host and serve host labels:
    ``(images (B, C, H, W) on the device, labels (B,) on the host)``, so captions need no device sync.

    The order is a permutation from a CPU generator seeded by (seed, epoch), rank r taking every W-th
    position, as :meth:`ResumableBatches.batches` (the same order there when the device is the CPU);
    the batch's indices go to the device without waiting for it; flips are drawn as before.
    """

    def __init__(self, dataset: TensorImageDataset, *args, labels: torch.Tensor | None = None, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.host_labels = (dataset.labels if labels is None else labels).cpu()  # (N,), e.g. caption labels

    def batches(self, epoch: int, start: int = 0):
        shuffle = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=shuffle)[self.rank :: self.world_size]
        for i in range(start, len(self)):
            yield i, order[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, index: torch.Tensor, epoch: int, i: int):
        images, _ = super().batch(index.to(self.device, non_blocking=True), epoch, i)
        return images, self.host_labels[index]


class Relabelled(Dataset):
    """``dataset`` with its labels replaced by ``labels[i]`` (any table indexed by sample: caption labels (N,),
    or ``PrecomputedEmbeddings``); keys as ``dataset``."""

    def __init__(self, dataset: Dataset, labels):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        image, _ = self.dataset[key]
        return image, self.labels[key[0] if isinstance(key, tuple) else key]


def sidecar_path(image: Path) -> Path:
    """The caption file of ``image``: the same path with the suffix ``.txt`` (``cat.png`` -> ``cat.txt``)."""
    return Path(image).with_suffix(".txt")


def read_caption(path: Path) -> str:
    """A caption file's text (UTF-8) with runs of whitespace, newlines included, collapsed to one space."""
    try:
        return " ".join(Path(path).read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read caption file '{path}': {e}") from e


class SidecarCaptions(Dataset):
    """An image folder (anything with ``files``, one path per index) served as ``(image, caption)``,
    the caption read from the ``.txt`` file beside each image (:func:`sidecar_path`).

    Every caption file is read once here; missing ones raise one DataError naming the first image,
    its expected ``.txt`` path and how many images lack one. ``self[(index, flip)]`` passes the key on.
    """

    def __init__(self, dataset: Dataset):
        files = getattr(dataset, "files", None)
        if files is None:
            raise DataError(f"data.captions=sidecar reads a .txt file beside each image of a folder, but "
                            f"{type(dataset).__name__} has no image files: use data=folder, or data.captions=templates")
        missing = [f for f in files if not sidecar_path(f).is_file()]
        if missing:
            raise DataError(f"no caption file for image '{missing[0]}': expected '{sidecar_path(missing[0])}' "
                            f"({len(missing)} of {len(files)} images have none; "
                            "data.captions=sidecar needs one per image)")
        self.dataset, self.captions = dataset, [read_caption(sidecar_path(f)) for f in files]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        image, _ = self.dataset[key]
        index = key[0] if isinstance(key, tuple) else key
        return image, self.captions[index]


def sidecar_captions(root: str | Path, skip_bad_files: bool = False) -> list[str]:
    """The sidecar captions of the image folder ``root`` in dataset order (its image files in sorted
    path order; ``skip_bad_files`` as ``data.dataset.skip_bad_files``, which drops files): the list
    to give :func:`write_embeddings` for ``data=folder data.captions=embeddings``."""
    return SidecarCaptions(ImageFolderDataset(root, image_size=1, skip_bad_files=skip_bad_files)).captions


class PrecomputedEmbeddings:
    """The arrays of an embeddings file (module docstring), checked against a dataset of ``length`` items.

    ``embeddings`` (N, L, D) and ``mask`` (N, L) stay numpy arrays in their stored dtypes (float16
    halves the memory); ``null`` is the empty prompt as torch ``(embeddings (1, L, D) float32, mask (1, L) bool)``.
    """

    def __init__(self, path: str | Path, length: int):
        path = Path(path).expanduser().absolute()
        if not path.is_file():
            raise DataError(f"data.embeddings_path='{path}' does not exist: write one with "
                            "ddpm.data.captions.write_embeddings (arrays embeddings, mask, null_embeddings, null_mask)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in EMBEDDING_KEYS if k not in npz.files]
                if missing:
                    raise DataError(f"embeddings file '{path}' has no array {missing[0]!r}: it must hold "
                                    f"{', '.join(EMBEDDING_KEYS)} (has {', '.join(npz.files) or 'none'})")
                arrays = [npz[k] for k in EMBEDDING_KEYS]
        except DataError:
            raise
        except Exception as e:  # not a zip / npz, a pickled object array, a truncated file
            raise DataError(f"cannot read embeddings file '{path}': {e}") from e
        emb, mask, null_emb, null_mask = arrays
        shapes = ", ".join(f"{k} {tuple(a.shape)} {a.dtype}" for k, a in zip(EMBEDDING_KEYS, arrays))
        ok = (emb.ndim == 3 and np.issubdtype(emb.dtype, np.floating) and mask.shape == emb.shape[:2]
              and null_emb.shape == emb.shape[1:] and null_mask.shape == emb.shape[1:2]
              and np.issubdtype(null_emb.dtype, np.floating)
              and all(m.dtype == np.bool_ or (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all())
                      for m in (mask, null_mask)))
        if not ok:
            raise DataError(f"embeddings file '{path}' has inconsistent arrays ({shapes}): expected embeddings "
                            "(N, L, D) float, mask (N, L) bool, null_embeddings (L, D) float, null_mask (L,) bool")
        if len(emb) != length:
            raise DataError(f"embeddings file '{path}' holds {len(emb)} rows but the dataset has {length} images: "
                            "one row per image, in the dataset's order (a folder: its files in sorted path order)")
        if not (np.isfinite(emb).all() and np.isfinite(null_emb).all()):
            raise DataError(f"embeddings file '{path}' holds non-finite values (NaN or inf)")
        self.path, self.embeddings, self.mask = path, emb, mask.astype(bool, copy=False)
        self.null = (torch.from_numpy(null_emb.astype(np.float32))[None],  # (1, L, D)
                     torch.from_numpy(null_mask.astype(bool))[None])  # (1, L)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``index``: embeddings (L, D) float32, mask (L,) bool."""
        return (torch.from_numpy(np.asarray(self.embeddings[index], dtype=np.float32)),
                torch.from_numpy(np.array(self.mask[index])))


class WithEmbeddings(Relabelled):
    """``dataset``'s images paired with their precomputed caption embeddings: ``(image, (emb (L, D), mask (L,)))``,
    which default collation turns into ``(images, [emb (B, L, D), mask (B, L)])``. Keys as ``dataset``."""

    def __init__(self, dataset: Dataset, embeddings: "PrecomputedEmbeddings"):
        super().__init__(dataset, embeddings)
        self.embeddings = embeddings


Encoder = Callable[[list[str]], tuple]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pad(a: np.ndarray, length: int) -> np.ndarray:
    """``a`` (B, L, ...) zero-padded (False for a mask) along L to ``length``."""
    return np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


@torch.no_grad()
def write_embeddings(path: str | Path, encoder: Encoder, captions: Sequence[str], batch_size: int = 256,
                     dtype: np.dtype | str = np.float32) -> Path:
    """Encode ``captions`` and the empty prompt with ``encoder`` and save them as an embeddings file
    for ``data.captions=embeddings data.embeddings_path=PATH``.

    ``encoder`` is any callable ``list[str] -> (embeddings (B, L, D), mask (B, L) bool)`` (torch or
    numpy), e.g. an OpenCLIP text tower on another machine. ``captions[i]`` must be the caption of
    dataset index i (a folder: ``ImageFolderDataset(root, size).files[i]``'s, e.g. via
    ``read_caption(sidecar_path(f))``). Batches of ``batch_size`` are encoded in turn; an encoder that
    pads to the longest caption of a batch is padded (zeros, mask False) to the longest of all.
    ``dtype`` float16 halves the file and the memory it takes when training. Written atomically
    (a temporary file renamed), compressed. Returns the path.
    """
    if isinstance(captions, str) or not len(captions):
        raise DataError("write_embeddings needs a non-empty list of captions, one per dataset index")
    embs, masks = [], []
    for start in range(0, len(captions), batch_size):
        emb, mask = encoder(list(captions[start : start + batch_size]))
        embs.append(_numpy(emb))
        masks.append(_numpy(mask).astype(bool))
    null_emb, null_mask = (_numpy(x) for x in encoder([""]))
    length = max(a.shape[1] for a in embs + [null_emb])
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, embeddings=np.concatenate([_pad(a, length) for a in embs]).astype(dtype),
                        mask=np.concatenate([_pad(m, length) for m in masks]),
                        null_embeddings=_pad(null_emb, length)[0].astype(dtype),
                        null_mask=_pad(null_mask.astype(bool), length)[0])
    os.replace(tmp, path)
    return path
