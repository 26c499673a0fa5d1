"""Tests for ddpm.data: the dataset builders, the ImageDataModule and every conf/data/*.yaml."""

import pickle
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image

from ddpm.data.datamodule import ImageDataModule
from ddpm.data.images import (
    DataError,
    ImageFolderDataset,
    RandomHFlip,
    TensorImageDataset,
    cifar10,
    digits,
    fashion_mnist,
    mnist,
)
from support.runs import CONF
from support.shared_data import MNIST, require

FASHION_MNIST = tuple(f.replace("MNIST/", "FashionMNIST/", 1) for f in MNIST)
SHARED_FILES = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}  # read from ../shared/data, skipped without it


def assert_images(x: torch.Tensor, shape: tuple) -> None:
    assert tuple(x.shape[-3:]) == shape and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A 10-image-per-batch synthetic CIFAR-10 in torchvision's on-disk layout (md5 checks bypassed)."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    return tmp_path / "cifar"


def save_image(path: Path, size=(40, 20), color=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_digits_are_1797_images_of_1x8x8_spanning_minus1_to_1():
    ds = digits()
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    assert len(ds) == 1797
    assert_images(images, (1, 8, 8))
    assert images.min() == -1 and images.max() == 1


@pytest.mark.parametrize("builder", [mnist, fashion_mnist])
def test_mnist_and_fashion_mnist_load_60000_images_of_1x28x28_from_gz_files(builder):
    ds = builder(require(*SHARED_FILES[builder.__name__]))
    image, label = ds[0]
    assert len(ds) == 60000 and 0 <= label < 10
    assert_images(image, (1, 28, 28))
    assert ds.images.max() == 255  # the full 0..255 range maps onto [-1, 1]


@pytest.mark.parametrize("builder", [mnist, fashion_mnist, cifar10])
def test_missing_root_raises_data_error_naming_the_path(builder, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as err:
        builder(missing)
    assert str(missing) in str(err.value) and "data.download=true" in str(err.value)
    assert "\n" not in str(err.value)


def test_cifar10_stand_in_loads_3x32x32_images(cifar_root):
    ds = cifar10(cifar_root)
    assert len(ds) == 50
    assert_images(ds[0][0], (3, 32, 32))


def test_hflip_mirrors_images_left_right():
    image = torch.arange(4.0).reshape(1, 1, 2, 2)
    ds = TensorImageDataset(image, torch.zeros(1), max_value=3)
    assert torch.equal(RandomHFlip(ds, p=1.0)[0][0], ds[0][0].flip(-1))
    assert torch.equal(RandomHFlip(ds, p=0.0)[0][0], ds[0][0])


def test_hflip_in_datamodule_yields_both_orientations():
    dm = ImageDataModule(digits, image_size=8, channels=1, batch_size=1, hflip=True)
    dm.setup("fit")
    draws = {tuple(dm.train_set[0][0].flatten().tolist()) for _ in range(50)}
    assert len(draws) == 2


def test_folder_converts_to_rgb_or_grayscale(tmp_path):
    save_image(tmp_path / "a.png", size=(16, 16), color=(255, 0, 0))
    rgb, _ = ImageFolderDataset(tmp_path, image_size=16, channels=3)[0]
    gray, _ = ImageFolderDataset(tmp_path, image_size=16, channels=1)[0]
    assert rgb.shape == (3, 16, 16) and torch.allclose(rgb[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert gray.shape == (1, 16, 16) and -1 < gray[0, 0, 0] < 1  # red has luma 76/255


def test_folder_resizes_shorter_side_and_centre_crops(tmp_path):
    image = Image.new("L", (60, 20), 0)  # wide: black, a white middle third, black
    image.paste(255, (20, 0, 40, 20))
    image.save(tmp_path / "wide.png")
    x, _ = ImageFolderDataset(tmp_path, image_size=10, channels=1)[0]
    assert x.shape == (1, 10, 10)
    assert x[0, :, 1:-1].min() == 1  # the centre crop is (nearly) all white
    assert x[0, :, 0].max() < 1  # the edges blend into the black side bands


def test_folder_finds_images_recursively_with_one_label_per_directory(tmp_path):
    save_image(tmp_path / "cats" / "a.JPG")
    save_image(tmp_path / "dogs" / "deep" / "b.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, image_size=8)
    assert len(ds) == 2 and ds.classes == ["cats", "dogs/deep"]
    assert [ds[i][1] for i in range(2)] == [0, 1]


def test_folder_corrupt_file_raises_error_naming_it(tmp_path):
    save_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderDataset(tmp_path, image_size=8)
    with pytest.raises(DataError, match="bad.jpg"):
        [ds[i] for i in range(len(ds))]


def test_folder_skip_bad_files_skips_them_with_a_warning(tmp_path):
    save_image(tmp_path / "good.png")
    truncated = save_image(tmp_path / "truncated.png")
    truncated.write_bytes(truncated.read_bytes()[:60])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipping undecodable image") as record:
        ds = ImageFolderDataset(tmp_path, image_size=8, skip_bad_files=True)
    assert sorted(Path(str(w.message).split("'")[1]).name for w in record) == ["bad.jpg", "truncated.png"]
    assert [p.name for p in ds.files] == ["good.png"]
    assert ds[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_folder_empty_or_missing_raises_data_error_naming_path_and_extensions(tmp_path, make):
    folder = tmp_path / "images"
    make(folder)
    with pytest.raises(DataError, match="images") as err:
        ImageFolderDataset(folder, image_size=8)
    assert str(folder) in str(err.value) and ".png" in str(err.value)


def test_datamodule_rejects_a_dataset_of_another_shape():
    dm = ImageDataModule(digits, image_size=28, channels=1, batch_size=4)
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*\(1, 28, 28\)"):
        dm.setup("fit")


def test_datamodule_loader_shuffles_and_drops_last_with_workers():
    dm = ImageDataModule(digits, image_size=8, channels=1, batch_size=1000, num_workers=1, on_device=False)
    loader = dm.train_dataloader()
    assert loader.loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape == (1000, 1, 8, 8)
    assert not torch.equal(batches[0][1], digits().labels[:1000])  # shuffled


def test_yaml_root_defaults_to_env_var(monkeypatch):
    monkeypatch.setenv("DDPM_DATA_ROOT", "/somewhere")
    assert OmegaConf.load(CONF / "data" / "mnist.yaml").root == "/somewhere"


def test_yaml_with_missing_root_fails_in_setup_with_data_error(tmp_path):
    cfg = OmegaConf.load(CONF / "data" / "mnist.yaml")
    cfg.root = str(tmp_path / "nope")
    dm = hydra.utils.instantiate(cfg)  # building the module reads nothing yet
    with pytest.raises(DataError, match="MNIST not found under .*nope"):
        dm.setup("fit")


def yaml_roots(tmp_path: Path, cifar_root: Path) -> dict:
    save_image(tmp_path / "folder" / "a.png")
    save_image(tmp_path / "folder" / "b.jpg", size=(30, 50))
    return {
        "digits": None,
        "synthetic": None,
        "cifar10": cifar_root,
        "folder": tmp_path / "folder",
    }


IMAGE_DATA_YAMLS = sorted(  # the 2-D point sets (ddpm.toy) are tested in test_toy.py
    p.stem for p in (CONF / "data").glob("*.yaml") if "ddpm.data.datamodule.ImageDataModule" in p.read_text()
)


@pytest.mark.parametrize("name", IMAGE_DATA_YAMLS)
def test_every_data_yaml_instantiates_and_yields_a_batch_of_declared_shape(name, tmp_path, cifar_root):
    cfg = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    root = require(*SHARED_FILES[name]) if name in SHARED_FILES else yaml_roots(tmp_path, cifar_root)[name]
    overrides = {"batch_size": 2, "num_workers": 0} | ({"root": str(root)} if root else {})
    cfg = OmegaConf.merge(cfg, overrides)
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, ImageDataModule)
    images, labels = next(iter(dm.train_dataloader()))
    assert_images(images, (dm.channels, dm.image_size, dm.image_size))
    assert images.shape[0] == 2 and labels.shape == (2,)


def test_a_dataset_without_a_test_split_says_so_by_name():
    with pytest.raises(DataError, match="data 'digits' has no test split"):
        ImageDataModule(digits, 8, 1).test_dataset()


def test_digits_can_hold_out_their_last_images_as_a_test_split_named_apart_in_caches():
    from functools import partial

    from sklearn.datasets import load_digits

    every = load_digits()
    dm = ImageDataModule(partial(digits, test_images=297), 8, 1, name="digits")
    train, test = dm.build_dataset(**dm.dataset_kwargs), dm.test_dataset()
    assert (len(train), len(test)) == (1500, 297)
    x, y = test[0]  # the 1501st image, scaled from 0..16 to [-1, 1]
    assert torch.allclose(x[0], torch.as_tensor(every.images[1500] / 8.0 - 1.0, dtype=x.dtype)) and y == every.target[1500]
    assert dm.dataset_name == "digits-heldout297"  # cached statistics of 1500 training images never pass for all 1797
    for bad in (-1, 1797, "some"):
        with pytest.raises(DataError, match=f"test_images={bad!r} is not allowed"):
            digits(test_images=bad)


def test_the_test_split_of_mnist_is_its_10000_held_out_images():
    assert len(ImageDataModule(mnist, 28, 1, root=str(require(*MNIST))).test_dataset()) == 10_000
