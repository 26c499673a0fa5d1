"""The Lightning ``ImageDataModule``: one ``conf/data/*.yaml`` is one call of it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from ddpm.data.captions import (
    CaptionTemplates,
    HostOrderDeviceBatches,
    PrecomputedEmbeddings,
    Relabelled,
    SidecarCaptions,
    TemplateCaptionBatches,
    WithEmbeddings,
    check_templates,
)
from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import DataError, RandomHFlip, TensorImageDataset
from ddpm.data.resumable_loader import LoaderBatches
from ddpm.errors import check_choice


class ImageDataModule(L.LightningDataModule):
    """Serves shuffled training batches of ``(images in [-1, 1], labels)``, or of captions; no validation data.

    Args:
        dataset: builds the training dataset when called (a Hydra ``_partial_`` of a builder above).
        image_size, channels: the shape the dataset must yield, ``(channels, image_size, image_size)``;
            exposed as attributes so the model config can interpolate them.
        batch_size, num_workers: DataLoader settings (``drop_last=True``; persistent workers if any).
        hflip: mirror images left-right at random (p=0.5), freshly each time one is drawn.
        root, download: when given, passed on to ``dataset`` as keyword arguments, so the command
            line can say ``data.root=DIR`` / ``data.download=true``.
        on_device: serve batches from a copy of the whole dataset in the training device's memory
            (:class:`DeviceBatches`) instead of a DataLoader. ``"auto"``: when the dataset is held
            in memory as a tensor of at most ``max_device_bytes`` (MNIST, CIFAR-10, digits; not
            image folders).
        max_device_bytes: the size limit of ``on_device="auto"`` (uint8 bytes, default 4 GiB).
        name: what the images are, for files computed from them (cached FID reference statistics):
            ``mnist``, ``cifar10``, ... for a dataset that holds the same images under any root;
            None for a folder of images, named by its root instead (see :attr:`dataset_name`).
        num_classes: the number of class labels (10 for digits, MNIST, Fashion-MNIST, CIFAR-10), for
            class-conditional models (``model.num_classes: ${data.num_classes}``); checked against the
            labels at setup. A folder labels images by sub-folder: null there is filled in with the
            number of sub-folders at setup, but a conditional model is built before that, so it
            needs ``data.num_classes=K`` set.
        captions: text prompts instead of labels (:mod:`ddpm.data.captions`); see :attr:`text_mode`.
            null: batches ``(images, labels (B,))``. ``templates``: ``(images, captions list[str])``
            made from the labels with ``caption_templates`` and ``class_names`` (a folder's default
            names: its sub-folders), drawn per (seed, rank, epoch, batch). ``sidecar`` (folders): the
            same, each caption read from the ``.txt`` beside its image. ``embeddings``: ``(images,
            [embeddings (B, L, D) float32, mask (B, L) bool])`` read from ``embeddings_path`` (an
            ``.npz``, row i = dataset index i), with the empty prompt as :attr:`null_condition`.
            ``sidecar`` and ``embeddings`` are served through a DataLoader (``on_device`` auto -> false).
        caption_templates: format strings with ``{name}`` (class name), ``{index}`` (label) and
            ``{strokes}`` ("thin strokes" / "thick strokes": ink at most / above the class median;
            in-memory datasets only).
        class_names: one name per label, for ``{name}``.
        embeddings_path: the ``.npz`` of ``captions=embeddings``.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        image_size: int,
        channels: int,
        batch_size: int = 128,
        num_workers: int = 0,
        hflip: bool = False,
        root: str | None = None,
        download: bool | None = None,
        on_device: bool | str = "auto",
        max_device_bytes: int = 4 * 2**30,
        name: str | None = None,
        num_classes: int | None = None,
        captions: str | None = None,
        caption_templates: list[str] | None = None,
        class_names: list[str] | None = None,
        embeddings_path: str | None = None,
    ):
        super().__init__()
        self.on_device = check_choice("data.on_device", on_device, (True, False, "auto"))
        self.max_device_bytes = max_device_bytes
        self.build_dataset = dataset
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.num_workers, self.hflip = batch_size, num_workers, hflip
        self.dataset_kwargs = {k: v for k, v in (("root", root), ("download", download)) if v is not None}
        self.train_set: Dataset | None = None
        self.name = name
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise DataError(f"data.num_classes={num_classes!r} is not allowed: use null or a positive integer")
        self.num_classes = num_classes
        self.captions = check_caption_options(captions, caption_templates, embeddings_path)
        self.caption_templates = None if caption_templates is None else list(caption_templates)
        self.class_names = None if class_names is None else list(class_names)
        self.embeddings_path = embeddings_path
        self.templates: CaptionTemplates | None = None  # set at setup for captions=templates
        self.caption_labels: torch.Tensor | None = None  # (N,) each image's row of the templates' table
        self.embeddings: PrecomputedEmbeddings | None = None  # set at setup for captions=embeddings

    @property
    def text_mode(self) -> str | None:
        """What a batch's second entry is: None (labels), ``"captions"`` (list[str]: templates,
        sidecar) or ``"embeddings"`` ([embeddings (B, L, D), mask (B, L)])."""
        return {None: None, "embeddings": "embeddings"}.get(self.captions, "captions")

    @property
    def null_condition(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The empty prompt of ``captions=embeddings``, ``(embeddings (1, L, D) float32, mask (1, L) bool)``
        (for classifier-free guidance's dropped prompts and for sampling); None otherwise."""
        if self.captions != "embeddings":
            return None
        if self.embeddings is None:
            self.setup("fit")
        return self.embeddings.null

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one training image, (C, H, W)."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def dataset_name(self) -> str:
        """The images' name in cache files: ``name`` when given, else (a folder) ``image_folder-<root's
        folder name>-<first 8 hex digits of the sha1 of its absolute path>``; ``<name>-heldout<N>`` when the
        dataset holds N images out as its test split (the digits' ``test_images``): other training images."""
        if self.name:
            held = getattr(self.build_dataset, "keywords", {}).get("test_images", 0)
            return f"{self.name}-heldout{held}" if held else self.name
        root = self.dataset_kwargs.get("root")
        if root is None:
            raise DataError("data.name=null and no data.root: name the dataset (data.name=NAME) to cache statistics of it")
        root = Path(root).expanduser().absolute()
        return f"image_folder-{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"

    def setup(self, stage: str | None = None) -> None:
        """Builds the dataset once and checks it against the declared shape and batch size."""
        if self.train_set is not None:
            return
        dataset = self.build_dataset(**self.dataset_kwargs)
        expected = (self.channels, self.image_size, self.image_size)
        shape = tuple(dataset[0][0].shape)
        if shape != expected:
            raise DataError(
                f"dataset yields images of shape {shape} but the config declares {expected} "
                f"(data.channels={self.channels}, data.image_size={self.image_size})"
            )
        if len(dataset) < self.batch_size:
            too_few = f"dataset has {len(dataset)} images, fewer than data.batch_size={self.batch_size}"
            raise DataError(too_few)
        self.num_classes = check_num_classes(dataset, self.num_classes)
        self.dataset = dataset
        train_set = self.captioned(dataset)
        self.train_set = RandomHFlip(train_set) if self.hflip else train_set

    def captioned(self, dataset: Dataset) -> Dataset:
        """``dataset`` as the training set of ``captions``: as is (labels, templates), with sidecar
        captions, or with precomputed embeddings; checks the caption options against it."""
        if self.captions == "templates":
            names = self.class_names or getattr(dataset, "classes", None)
            if names is None:
                raise DataError("data.captions=templates needs data.class_names, one name per label")
            self.templates = CaptionTemplates(self.caption_templates, names)
            self.caption_labels = self.templates.caption_labels(dataset)  # (N,) rows of its table
            return Relabelled(dataset, self.caption_labels)
        elif self.captions == "sidecar":
            return SidecarCaptions(dataset)
        elif self.captions == "embeddings":
            self.embeddings = PrecomputedEmbeddings(self.embeddings_path, len(dataset))
            return WithEmbeddings(dataset, self.embeddings)
        return dataset

    def test_dataset(self) -> Dataset:
        """The dataset's test split (held-out images, e.g. for the likelihood); a DataError if it has none."""
        return self.build_dataset(train=False, **self.dataset_kwargs)

    def serves_from_device(self) -> bool:
        """Whether :meth:`train_dataloader` gives :class:`DeviceBatches` (see ``on_device``)."""
        in_memory = isinstance(self.dataset, TensorImageDataset)
        if self.captions in ("sidecar", "embeddings"):  # per-image strings / arrays: a DataLoader
            if self.on_device is True:
                raise DataError(f"data.on_device=true cannot serve data.captions={self.captions}: "
                                "use data.on_device=auto")
            return False
        if self.on_device is True and not in_memory:
            raise DataError(f"data.on_device=true needs an in-memory dataset, not {type(self.dataset).__name__}: "
                            "use data.on_device=false (a DataLoader) for image folders")
        if self.on_device == "auto":
            return in_memory and self.dataset.images.numel() <= self.max_device_bytes
        return self.on_device

    def train_dataloader(self) -> LoaderBatches | DeviceBatches:
        """Shuffled batches, resumable mid-epoch; the last partial batch is dropped."""
        if self.train_set is None:
            self.setup("fit")
        trainer = self.trainer
        where = {"seed": torch.initial_seed() % 2**62, "rank": trainer.global_rank if trainer else 0,
                 "world_size": trainer.world_size if trainer else 1,
                 "epoch": (lambda: trainer.current_epoch) if trainer else None}
        if self.serves_from_device():
            device = trainer.strategy.root_device if trainer else "cpu"
            if self.templates is None:
                batches = DeviceBatches(self.dataset, self.batch_size, hflip=self.hflip, device=device, **where)
            else:  # captions are made on the host from host caption labels
                batches = HostOrderDeviceBatches(self.dataset, self.batch_size, hflip=self.hflip, device=device,
                                                 labels=self.caption_labels, **where)
        else:
            batches = LoaderBatches(self.train_set, self.batch_size, hflip=self.hflip, num_workers=self.num_workers,
                                    pin_memory=torch.cuda.is_available(), **where)
        if self.templates is not None:  # (images, labels) -> (images, captions)
            return TemplateCaptionBatches(batches, self.templates, seed=where["seed"], rank=where["rank"])
        return batches


CAPTION_SOURCES = (None, "templates", "sidecar", "embeddings")


def check_caption_options(captions: str | None, templates, embeddings_path: str | None) -> str | None:
    """``captions`` if it is a known source and has what it needs, else a DataError (one line)."""
    if captions not in CAPTION_SOURCES:
        raise DataError(f"data.captions={captions!r} is not allowed: use null, templates, sidecar or embeddings")
    if captions == "templates":
        check_templates(templates)
    if captions == "embeddings" and not embeddings_path:
        raise DataError("data.captions=embeddings needs data.embeddings_path=FILE.npz "
                        "(write one with ddpm.data.captions.write_embeddings)")
    return captions


def check_num_classes(dataset: Dataset, num_classes: int | None) -> int | None:
    """``num_classes`` checked against the labels of ``dataset`` (a folder's sub-folders; the largest
    label of an in-memory set); null for a folder becomes its number of sub-folders."""
    classes = getattr(dataset, "classes", None)
    if classes is not None:  # ImageFolderDataset: one label per sub-folder
        if num_classes is not None and num_classes != len(classes):
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise DataError(f"data.num_classes={num_classes} but the folder has {len(classes)} sub-folders "
                            f"({shown}), one class each: set data.num_classes={len(classes)}")
        return len(classes)
    labels = getattr(dataset, "labels", None)
    if num_classes is not None and isinstance(labels, torch.Tensor) and len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"data.num_classes={num_classes} but the dataset has labels {low}..{high}: "
                            f"set data.num_classes={high + 1} (labels must lie in [0, num_classes))")
    return num_classes
