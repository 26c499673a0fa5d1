"""Tests for the DDPM U-Net (src/ddpm/unet.py) and its conf/model/*.yaml configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ddpm.errors import ConfigError
from ddpm.nets.unet import AttnBlock, UNet

MODEL_CONFS = Path(__file__).resolve().parents[1] / "conf" / "model"
# (batch, channels, image_size) fed to each model config in the shape test.
DATA_SHAPES = {
    "unet_cifar10": (1, 3, 32),
    "unet_mnist": (2, 1, 28),
    "unet_mnist_cpu": (2, 1, 28),
    "unet_small": (2, 1, 8),
    "unet_tiny": (2, 1, 8),
}


def build(name: str, channels: int = 1, image_size: int = 8, **overrides) -> UNet:
    """Instantiate conf/model/<name>.yaml by hand, substituting the ${data.*} interpolations."""
    conf = yaml.safe_load((MODEL_CONFS / f"{name}.yaml").read_text())
    assert conf.pop("_target_") == "ddpm.nets.unet.UNet"
    conf.update(image_size=image_size, in_channels=channels, **overrides)
    return UNet(**conf)


def randomised(model: UNet, seed: int = 0) -> UNet:
    """Give the zero-initialised layers random weights so the output depends on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def tiny() -> UNet:
    torch.manual_seed(0)
    return randomised(build("unet_tiny")).eval()


@pytest.mark.parametrize(  # the MLP (conf/model/mlp.yaml) is tested in test_toy.py
    "name", sorted(p.stem for p in MODEL_CONFS.glob("*.yaml") if "ddpm.nets.unet.UNet" in p.read_text())
)
def test_output_shape_equals_input_shape(name: str) -> None:
    assert name in DATA_SHAPES, f"add the data shape for conf/model/{name}.yaml to DATA_SHAPES"
    batch, channels, size = DATA_SHAPES[name]
    model = build(name, channels, size).eval()
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        out = model(x, torch.randint(0, 1000, (batch,)))
    assert out.shape == x.shape


def test_cifar10_config_has_the_paper_parameter_count() -> None:
    model = build("unet_cifar10", channels=3, image_size=32)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 35.7e6) < 0.1e6, n_params  # Ho et al.'s CIFAR-10 model has 35,746,307


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"image_size": 9}, "image_size=9"),
        ({"base_channels": 48}, "base_channels=48"),
        ({"attn_resolutions": (16,)}, "attn_resolutions=(16,)"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"num_res_blocks": 0}, "num_res_blocks=0"),
    ],
)
def test_bad_argument_raises_value_error_naming_it(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
        build("unet_tiny", **overrides)
    assert named in str(err.value)


def test_image_size_error_says_which_sizes_are_allowed() -> None:
    with pytest.raises(ConfigError, match="use a multiple of 8"):
        UNet(image_size=30)


def test_timestep_changes_the_output(tiny: UNet) -> None:
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out_0 = tiny(x, torch.zeros(2, dtype=torch.long))
        out_500 = tiny(x, torch.full((2,), 500))
    assert not torch.allclose(out_0, out_500, atol=1e-4)


def test_attention_uses_scaled_dot_product_attention(tiny: UNet, monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        tiny(torch.randn(2, 1, 8, 8), torch.tensor([3, 7]))
    assert len(calls) == sum(isinstance(m, AttnBlock) for m in tiny.modules()) > 0


def test_channels_last_gives_the_same_output(tiny: UNet) -> None:
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        expected = tiny(x, t)
        out = tiny.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_eval_mode_is_deterministic_even_with_dropout() -> None:
    model = randomised(build("unet_tiny", dropout=0.5)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t), atol=0, rtol=0)


def test_runs_under_bf16_autocast(tiny: UNet) -> None:
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0, 999])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
