"""Data served from device memory (ddpm.data.device_batches): every image once an epoch, scaled like the
dataset, split across ranks without overlap, flipped about half the time; which data the ImageDataModule serves so."""

from types import SimpleNamespace

import pytest
import torch

from ddpm.data.datamodule import ImageDataModule
from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import TensorImageDataset, digits


def ramp_dataset(n=10):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()
    return TensorImageDataset(images, torch.arange(n), max_value=9)


def test_device_batches_serve_every_image_once_per_epoch_scaled_like_the_dataset():
    ds = ramp_dataset(10)
    batches = list(DeviceBatches(ds, batch_size=3))
    assert len(batches) == 3  # 10 // 3, the partial batch dropped
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist())) == 9
    for images, ys in batches:
        for image, y in zip(images, ys):
            torch.testing.assert_close(image, ds[int(y)][0])  # the same [-1, 1] scaling as __getitem__


def test_device_batches_split_each_epoch_across_ranks_without_overlap():
    ds = ramp_dataset(12)
    epoch = SimpleNamespace(n=0)
    ranks = [DeviceBatches(ds, 2, seed=5, rank=r, world_size=3, epoch=lambda: epoch.n) for r in range(3)]
    seen = [torch.cat([y for _, y in r]) for r in ranks]
    assert sorted(torch.cat(seen).tolist()) == list(range(12))  # disjoint shards that cover the epoch
    epoch.n = 1
    assert not torch.equal(torch.cat([y for _, y in ranks[0]]), seen[0])  # a new order each epoch


def test_device_batches_flip_about_half_the_images():
    images = torch.arange(6, dtype=torch.uint8).view(1, 1, 1, 6).expand(400, 1, 1, 6).contiguous()
    ds = TensorImageDataset(images, torch.zeros(400, dtype=torch.long), max_value=5)
    x = torch.cat([b for b, _ in DeviceBatches(ds, 100, hflip=True)])
    plain, mirrored = ds[0][0], ds[0][0].flip(-1)
    is_plain = (x == plain).flatten(1).all(1)
    is_mirrored = (x == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_mirrored).all()) and 140 < int(is_mirrored.sum()) < 260


def test_datamodule_serves_in_memory_data_from_the_device_and_folders_through_a_dataloader(tmp_path):
    from PIL import Image

    dm = ImageDataModule(digits, image_size=8, channels=1, batch_size=16)
    assert isinstance(dm.train_dataloader(), DeviceBatches)
    assert not isinstance(ImageDataModule(digits, 8, 1, 16, on_device=False).train_dataloader(), DeviceBatches)
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(tmp_path / f"{i}.png")
    from functools import partial

    from ddpm.data.images import DataError, image_folder

    folder = partial(image_folder, str(tmp_path), 8, 1)
    assert not isinstance(ImageDataModule(folder, 8, 1, 2).train_dataloader(), DeviceBatches)
    with pytest.raises(DataError, match="on_device=true needs an in-memory dataset"):
        ImageDataModule(folder, 8, 1, 2, on_device=True).train_dataloader()
