"""Image files deeper than 8 bits (ddpm.data.images): a 16-bit PNG is scaled by 65535, not squashed to 8 bits,
also when resized; a float TIFF is taken as 0..1 and refused outside it."""

import numpy as np
import pytest
import torch
from PIL import Image


def test_a_16_bit_png_is_scaled_by_65535_not_squashed_to_8_bits(tmp_path):
    from ddpm.data.images import ImageFolderDataset

    levels = (np.arange(64).reshape(8, 8) * 1040 + 7).astype(np.uint16)  # 7 .. 65527: most above 255
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # PIL reads it as 16-bit
    expected = torch.from_numpy(levels.astype(np.float64) * 2 / 65535 - 1)
    for channels in (1, 3):
        image, _ = ImageFolderDataset(tmp_path, image_size=8, channels=channels)[0]
        assert image.shape == (channels, 8, 8) and image.dtype == torch.float32
        torch.testing.assert_close(image.double(), expected.expand(channels, 8, 8), rtol=0, atol=1e-6)
    assert len(torch.unique(image)) == 64  # convert("L") left two levels: 7 and 255


def test_a_float_tiff_is_taken_as_0_to_1_and_refused_outside(tmp_path):
    from ddpm.data.images import DataError, ImageFolderDataset

    values = np.linspace(0, 1, 64).reshape(8, 8).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == "F"
    image, _ = ImageFolderDataset(tmp_path, image_size=8, channels=1)[0]
    torch.testing.assert_close(image.double()[0], torch.from_numpy(values.astype(np.float64) * 2 - 1), rtol=0, atol=1e-6)
    Image.fromarray(values * 4).save(tmp_path / "b.tif")  # 0..4: not clipped silently
    with pytest.raises(DataError, match=r"'.*b\.tif' has values from 0 to 4: float pixels are taken as 0\.\.1"):
        ImageFolderDataset(tmp_path, image_size=8, channels=1)[1]


def test_a_16_bit_png_resized_matches_its_8_bit_copy(tmp_path):
    """16-bit levels k * 257 are the 8-bit levels k at full scale: resized from 16x16 to 8x8, the two files
    give the same image up to the 8-bit path's rounding of the resized pixels (1/255 of the range)."""
    from ddpm.data.images import ImageFolderDataset

    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    (tmp_path / "8").mkdir()
    (tmp_path / "16").mkdir()
    Image.fromarray(k).save(tmp_path / "8" / "k.png")
    Image.fromarray(k.astype(np.uint16) * 257).save(tmp_path / "16" / "k.png")
    eight, _ = ImageFolderDataset(tmp_path / "8", image_size=8, channels=1)[0]
    sixteen, _ = ImageFolderDataset(tmp_path / "16", image_size=8, channels=1)[0]
    assert (eight - sixteen).abs().max() <= 2 / 255 + 1e-6
    assert (eight - sixteen).abs().max() > 0  # resized as floats, not through 8 bits
