"""Captioned datasets (ddpm.data.captions): templates from labels, sidecar .txt files, precomputed
embeddings (.npz) and the batches the ImageDataModule serves with each."""

from functools import partial
from itertools import islice
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpm.data.captions import CaptionTemplates, HostOrderDeviceBatches, sidecar_captions, write_embeddings
from ddpm.data.datamodule import ImageDataModule
from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import DataError, digits, image_folder
from support.runs import CONF



def data_yaml(name: str, **overrides) -> ImageDataModule:
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "data" / f"{name}.yaml"), overrides)
    return hydra.utils.instantiate(cfg)


def filled(template: str, name: str, label: int) -> str:
    """A template filled in by plain string replacement (independent of str.format)."""
    return template.replace("{name}", name).replace("{index}", str(label))


def stand_in_encoder(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token j of a text (a start token 0, then its characters' code points) -> (code, j, 1); padded to the
    longest text of the call: embeddings (B, L, 3), mask (B, L)."""
    length = max(len(t) for t in texts) + 1
    emb, mask = torch.zeros(len(texts), length, 3), torch.zeros(len(texts), length, dtype=torch.bool)
    for b, text in enumerate(texts):
        for j, code in enumerate([0] + [ord(c) for c in text]):
            emb[b, j], mask[b, j] = torch.tensor([float(code), float(j), 1.0]), True
    return emb, mask


def expected_row(text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The stand-in encoder's row for ``text`` padded to ``length``, written out directly."""
    codes = [0] + [ord(c) for c in text]
    emb = np.zeros((length, 3), np.float32)
    emb[: len(codes)] = [[c, j, 1] for j, c in enumerate(codes)]
    return emb, np.arange(length) < len(codes)


def test_templates_name_each_label_and_vary_across_draws():
    cfg = OmegaConf.load(CONF / "data" / "digits.yaml")
    plain = [t for t in cfg.caption_templates if "{strokes}" not in t]
    assert {"a handwritten {name}", "the digit {index}, {strokes}"} <= set(cfg.caption_templates)  # the examples
    templates = CaptionTemplates(plain, cfg.class_names)
    labels = torch.arange(10).repeat(40)  # (400,)
    draws = [templates.draw(labels, (0, 0, epoch, 0)) for epoch in range(3)]
    for captions in draws:
        for y, caption in zip(labels.tolist(), captions):
            assert caption in {filled(t, cfg.class_names[y], y) for t in plain}
    sevens = {"a handwritten seven", "the digit 7", "a handwritten digit seven", "the number seven, handwritten"}
    assert set(draws[0][7::10]) == sevens  # every template drawn for 40 sevens
    assert draws[0] != draws[1] and draws[0] == templates.draw(labels, (0, 0, 0, 0))  # new per key, same per key


def test_strokes_say_thin_up_to_the_class_median_ink_and_thick_above_it():
    torch.manual_seed(0)
    dm = data_yaml("digits", batch_size=128, captions="templates", caption_templates=["{index}: {strokes}"])
    ds = digits()
    ink = ds.images.numpy().reshape(len(ds), -1).mean(1)  # (N,) mean pixel, float64
    median = {y: np.median(ink[ds.labels.numpy() == y]) for y in range(10)}
    expected = [f"{y}: {'thick' if ink[i] > median[y] else 'thin'} strokes" for i, y in enumerate(ds.labels.tolist())]
    by_image = {ds.images[i].numpy().tobytes(): [] for i in range(len(ds))}
    for i in range(len(ds)):
        by_image[ds.images[i].numpy().tobytes()].append(expected[i])
    served = [(x, c) for images, captions in dm.train_dataloader() for x, c in zip(images, captions)]
    assert len(served) == 14 * 128
    for x, caption in served:  # images back to 0..16 to find their expected caption(s)
        assert caption in by_image[((x + 1) * 8).round().to(torch.uint8).numpy().tobytes()]
    assert 0.4 < np.mean([c.endswith("thick strokes") for _, c in served]) < 0.6


def test_template_batches_are_the_plain_batches_captioned_deterministically_and_resumable():
    torch.manual_seed(3)
    plain = list(data_yaml("digits", batch_size=128).train_dataloader())
    loader = data_yaml("digits", batch_size=128, captions="templates").train_dataloader()
    assert isinstance(loader.inner, DeviceBatches)  # served from memory, captioned on the host
    whole = list(loader)
    names = OmegaConf.load(CONF / "data" / "digits.yaml").class_names
    for (x, labels), (images, captions) in zip(plain, whole):
        assert torch.equal(x, images) and isinstance(captions, list) and len(captions) == 128
        assert all(names[y] in c or f"digit {y}" in c for y, c in zip(labels.tolist(), captions))
    assert [c for _, c in whole] == [c for _, c in data_yaml("digits", captions="templates").train_dataloader()]
    assert [c for _, c in list(loader)] != [c for _, c in whole]  # the next epoch draws anew
    first = data_yaml("digits", captions="templates").train_dataloader()
    list(islice(first, 5))
    resumed = data_yaml("digits", captions="templates").train_dataloader()
    resumed.load_state_dict(first.state_dict())
    assert [c for _, c in resumed] == [c for _, c in whole[5:]]
    through_loader = data_yaml("digits", captions="templates", on_device=False).train_dataloader()
    assert [c for _, c in through_loader] == [c for _, c in whole]  # the DataLoader path draws the same


def test_host_order_device_batches_are_the_device_batches_with_host_labels_on_the_cpu():
    ds = digits()
    for rank in range(3):
        kwargs = dict(batch_size=50, hflip=True, seed=7, rank=rank, world_size=3)
        plain, host = list(DeviceBatches(ds, **kwargs)), list(HostOrderDeviceBatches(ds, **kwargs))
        assert len(plain) == len(host) == 1797 // 3 // 50
        for (x, y), (x_host, y_host) in zip(plain, host):
            assert torch.equal(x, x_host) and torch.equal(y, y_host) and y_host.device.type == "cpu"


def test_default_path_is_unchanged_labels_on_device_and_no_null_condition():
    dm = data_yaml("digits")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches) and dm.text_mode is None and dm.null_condition is None
    images, labels = next(iter(loader))
    assert images.shape == (128, 1, 8, 8) and labels.dtype == torch.int64


def make_folder(root: Path, captions: dict[str, str | None]) -> Path:
    for stem, caption in captions.items():
        Image.new("L", (8, 8), color=len(stem) * 30).save(root / f"{stem}.png")
        if caption is not None:
            (root / f"{stem}.txt").write_text(caption)
    return root


def test_sidecar_captions_are_read_beside_each_image_in_sorted_order(tmp_path):
    make_folder(tmp_path, {"b": "a red\n  square ", "a": "a cat", "ccc": "three"})
    dm = ImageDataModule(lambda: image_folder(tmp_path, 8, 1), 8, 1, batch_size=3, captions="sidecar", hflip=True)
    dm.setup("fit")
    assert dm.train_set.dataset.captions == ["a cat", "a red square", "three"] and dm.text_mode == "captions"
    assert sidecar_captions(tmp_path) == ["a cat", "a red square", "three"]  # the order write_embeddings needs
    images, captions = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 1, 8, 8) and sorted(captions) == ["a cat", "a red square", "three"]
    by_caption = dict(zip(captions, images))
    assert torch.equal(by_caption["three"], dm.dataset[2][0])  # the caption travels with its own image


def test_a_missing_caption_file_is_one_line_naming_the_image_the_txt_and_the_count(tmp_path):
    make_folder(tmp_path, {"a": "a cat", "b": None, "c": None})
    dm = ImageDataModule(lambda: image_folder(tmp_path, 8, 1), 8, 1, batch_size=2, captions="sidecar")
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert f"'{tmp_path / 'b.png'}'" in message and f"'{tmp_path / 'b.txt'}'" in message
    assert "2 of 3 images" in message and "\n" not in message


def test_folder_templates_name_the_sub_folders_and_strokes_need_images_in_memory(tmp_path):
    for sub in ("cat", "dog"):
        (tmp_path / sub).mkdir()
        make_folder(tmp_path / sub, {"x": None})
    folder = partial(image_folder, tmp_path, 8, 1)
    dm = ImageDataModule(folder, 8, 1, batch_size=2, captions="templates", caption_templates=["a photo of the {name}"])
    assert sorted(next(iter(dm.train_dataloader()))[1]) == ["a photo of the cat", "a photo of the dog"]
    dm = ImageDataModule(folder, 8, 1, batch_size=2, captions="templates", caption_templates=["{name}, {strokes}"])
    with pytest.raises(DataError, match="uses {strokes}, which needs an in-memory dataset"):
        dm.setup("fit")


def test_write_embeddings_round_trips_through_the_datamodule_in_dataset_order(tmp_path):
    n = len(digits())
    captions = [str(i) for i in range(n)]  # caption i names index i, so batches show their alignment
    path = write_embeddings(tmp_path / "emb.npz", stand_in_encoder, captions, batch_size=1000)
    with np.load(path) as npz:
        length = npz["embeddings"].shape[1]
        assert length == max(len(c) for c in captions) + 1  # the short batches were padded to the longest
        for i in (0, 9, 10, 999, n - 1):
            emb, mask = expected_row(captions[i], length)
            np.testing.assert_array_equal(npz["embeddings"][i], emb)
            np.testing.assert_array_equal(npz["mask"][i], mask)
    dm = data_yaml("digits", batch_size=64, captions="embeddings", embeddings_path=str(path))
    loader = dm.train_dataloader()
    assert not isinstance(loader, DeviceBatches) and dm.text_mode == "embeddings"
    images, (emb, mask) = next(iter(loader))
    assert images.shape == (64, 1, 8, 8) and emb.shape == (64, length, 3) and mask.shape == (64, length)
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    for image, row, m in zip(images, emb, mask):
        index = int("".join(chr(int(c)) for c in row[1 : int(m.sum()), 0]))  # decode the caption: its index
        assert torch.equal(image, dm.dataset[index][0])
    null_emb, null_mask = dm.null_condition
    emb0, mask0 = expected_row("", length)
    assert null_emb.shape == (1, length, 3) and torch.equal(null_emb[0], torch.from_numpy(emb0))
    assert null_mask.dtype == torch.bool and torch.equal(null_mask[0], torch.from_numpy(mask0))


def good_arrays(n=1797, length=4, dim=2) -> dict:
    return {"embeddings": np.zeros((n, length, dim), np.float32), "mask": np.ones((n, length), bool),
            "null_embeddings": np.zeros((length, dim), np.float32), "null_mask": np.ones(length, bool)}


@pytest.mark.parametrize("change, words", [
    (None, "does not exist"),
    (lambda a: a.pop("null_mask"), "has no array 'null_mask'"),
    (lambda a: a.update(good_arrays(n=100)), "holds 100 rows but the dataset has 1797 images"),
    (lambda a: a.update(mask=np.ones((1797, 5), bool)), "inconsistent arrays"),
    (lambda a: a.update(null_embeddings=np.zeros((4, 3), np.float32)), "inconsistent arrays"),
    (lambda a: a["embeddings"].__setitem__((0, 0, 0), np.nan), "non-finite"),
], ids=["missing-file", "missing-key", "wrong-length", "mask-shape", "null-shape", "nan"])
def test_bad_embeddings_files_fail_in_one_line(tmp_path, change, words):
    path = tmp_path / "emb.npz"
    if change is not None:
        arrays = good_arrays()
        change(arrays)
        np.savez(path, **arrays)
    dm = ImageDataModule(digits, 8, 1, batch_size=4, captions="embeddings", embeddings_path=str(path))
    with pytest.raises(DataError, match=words) as err:
        dm.setup("fit")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("options, words", [
    ({"captions": "words"}, "data.captions='words' is not allowed"),
    ({"captions": "templates"}, "data.caption_templates=None is not allowed"),
    ({"captions": "templates", "caption_templates": ["a {colour} {name}"]}, r"uses \['colour'\]"),
    ({"captions": "embeddings"}, "needs data.embeddings_path"),
])
def test_bad_caption_options_fail_in_one_line(options, words):
    with pytest.raises(DataError, match=words):
        ImageDataModule(digits, 8, 1, **options)


@pytest.mark.parametrize("options, words", [
    ({"captions": "sidecar"}, "data.captions=sidecar reads a .txt file beside each image of a folder"),
    ({"captions": "templates", "caption_templates": ["{name}"], "class_names": ["zero"]}, "labels 0..9"),
    ({"captions": "templates", "caption_templates": ["{name}"]}, "needs data.class_names"),
])
def test_caption_options_that_do_not_fit_the_dataset_fail_at_setup(options, words):
    with pytest.raises(DataError, match=words):
        ImageDataModule(digits, 8, 1, batch_size=4, **options).setup("fit")
