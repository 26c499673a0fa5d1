"""Latent diffusion (codec=autoencoder): the scale factor, the frozen autoencoder, the checkpoint's record of
which autoencoder, bad input, and a tiny run on the digits that trains, samples, decodes and evaluates."""

import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from support.autoencoder_fixtures import save_autoencoder
from support.runs import CONF, TINY, compose_train
from ddpm.errors import ConfigError, root_config_error
from ddpm.nets.autoencoder import KLAutoencoder, weights_digest
from ddpm.autoencoding.latents import LatentCache, latent_scale, posterior_moments

# A tiny autoencoder of the 8x8 digits: one level (f=1), so its latents are 4x8x8, unet_latent's shape.
TINY_AE = ["data=digits", "model.base_channels=8", "model.channel_mult=[1]", "model.norm_groups=4",
           "model.attention=false"]
LATENT = ["experiment=ldm_mnist", *TINY, "data=digits", "model=unet_latent", "model.base_channels=32",
          "model.num_res_blocks=1", "trainer.max_steps=2", "sampler.steps=3", "callbacks.sample_grid.every_n_steps=2",
          "codec.scale_images=256", "codec.cache_latents=true"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the module


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    """Two tiny autoencoder checkpoints of different weights."""
    root = tmp_path_factory.mktemp("ae")
    return save_autoencoder(root / "a", 0, *TINY_AE), save_autoencoder(root / "b", 1, *TINY_AE)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, autoencoders):
    """A latent run of 2 steps on the digits, in this process."""
    from ddpm.runs.train import train

    run = tmp_path_factory.mktemp("latent") / "run"
    train(compose_train(*LATENT, f"codec.autoencoder_ckpt={autoencoders[0]}", tmp_path=run))
    return run


def digits_images() -> torch.Tensor:
    from ddpm.data.images import digits

    data = digits()
    return torch.stack([data[i][0] for i in range(len(data))])  # (1797, 1, 8, 8) in [-1, 1]


def test_scaled_latents_have_unit_variance_on_the_images_the_scale_came_from():
    torch.manual_seed(0)
    ae = KLAutoencoder(1, 8, base_channels=8, channel_mult=(1, 2), norm_groups=4, attention=False).eval()
    x = digits_images()[:300]
    scale = latent_scale(*posterior_moments(ae, x, batch_size=128))
    with torch.no_grad():  # independently: float64 encoding, one posterior sample per image, many times over
        posterior = ae.double().encode(x.double())
        g = torch.Generator().manual_seed(0)
        z = torch.stack([posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g,
                                                                       dtype=torch.float64) for _ in range(200)])
    assert z.std().item() * scale == pytest.approx(1.0, abs=2e-3)  # LDM's 1 / z.flatten().std(), averaged over eps
    total = (scale * posterior.mean).var(unbiased=False) + (scale * posterior.std).square().mean()
    assert total.item() == pytest.approx(1.0, abs=1e-5)  # the law of total variance, exactly


def test_the_cache_returns_the_posterior_of_each_image_and_encodes_what_it_lacks():
    torch.manual_seed(0)
    ae = KLAutoencoder(1, 8, base_channels=8, channel_mult=(1,), norm_groups=4, attention=False).eval()
    from ddpm.data.images import digits

    data = digits()
    cache = LatentCache(ae, data.images[:100], data.max_value)
    batch = torch.cat([digits_images()[[5, 3, 99]], digits_images()[[7]].flip(-1)])  # the last one is not cached
    mean, std = cache.moments(batch)
    want_mean, want_std = posterior_moments(ae, batch)
    torch.testing.assert_close(mean, want_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, want_std, rtol=1e-5, atol=1e-5)


def test_a_latent_run_trains_samples_decodes_and_evaluates_to_images_and_refuses_nll(latent_run, autoencoders, tmp_path):
    from hydra import compose, initialize_config_dir

    from ddpm.runs.evaluate import evaluate
    from support.standins import StandIn

    ckpt = torch.load(latent_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    keys = ckpt["state_dict"].keys()
    assert not any("autoencoder." in k or k.startswith("_autoencoder") for k in keys)  # the frozen AE is not saved
    ae_path, digest = ckpt["autoencoder"]["path"], ckpt["autoencoder"]["digest"]
    assert bytes(ckpt["state_dict"]["codec.autoencoder_digest"].tolist()).hex() == digest
    assert OmegaConf.load(latent_run / "config.yaml").codec.autoencoder_ckpt == ae_path
    # the scale factor, computed at the start of the fit from 256 training images (seed 0)
    from ddpm.data.images import digits
    from ddpm.runs.autoencoder_load import load_autoencoder
    from ddpm.autoencoding.latents import scale_images

    ae, info = load_autoencoder(autoencoders[0])
    assert info["digest"] == digest
    with torch.no_grad():
        posterior = ae.double().encode(scale_images(digits(), 256).double())
    scale = float(ckpt["state_dict"]["codec.scale_factor"])
    total = (scale * posterior.mean).var(unbiased=False) + (scale * posterior.std).square().mean()
    assert total.item() == pytest.approx(1.0, abs=1e-4)
    assert (latent_run / "samples" / "step_0000002.png").exists()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt_path={latent_run}/checkpoints/last.ckpt", "metrics=[fid]", "num_samples=4", "batch_size=2",
            "sampler=ddim", "sampler.steps=3", f"out_dir={tmp_path / 'eval'}", "progress=false",
            "reference_count=20", f"reference_cache_dir={tmp_path}"])
    result = evaluate(cfg, StandIn())  # a stand-in for Inception: the samples' shape is what is tested
    with np.load(tmp_path / "eval" / "samples.npz") as f:
        images = f["images"]
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8  # decoded images, not 4x8x8 latents
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_samples"] == result["num_samples"] == 4
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # bits/dim of latents are not of images
        cfg = compose("evaluate", overrides=[f"ckpt_path={latent_run}/checkpoints/last.ckpt", "metrics=[nll]"])
    with pytest.raises(ConfigError, match=r"metrics=\[nll\] on a latent diffusion model") as err:
        evaluate(cfg)
    assert "\n" not in str(err.value)


def test_the_frozen_autoencoder_gets_no_gradients_and_is_not_trained_or_saved(autoencoders, tmp_path):
    from ddpm.runs.build import build_module

    cfg = compose_train(*LATENT, f"codec.autoencoder_ckpt={autoencoders[0]}", "codec.scale_factor=0.5",
                        tmp_path=tmp_path)
    module = build_module(cfg)
    ae = module.codec.autoencoder
    ae_params = {id(p) for p in ae.parameters()}
    assert ae_params and not ae_params & {id(p) for p in module.parameters()}
    assert not any(k.startswith(("autoencoder.", "_autoencoder")) for k in module.state_dict())
    optimizer = module.configure_optimizers()["optimizer"]
    assert not ae_params & {id(p) for group in optimizer.param_groups for p in group["params"]}
    module.train()
    assert not ae.training  # frozen: stays in eval mode
    x = digits_images()[:4]
    per_sample, _ = module.compute_loss([x, torch.zeros(4, dtype=torch.long)])
    per_sample.mean().backward()
    assert all(p.grad is None for p in ae.parameters()) and any(p.grad is not None for p in module.net.parameters())
    assert module.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)  # decoded to the data's shape


def test_a_latent_checkpoint_with_another_autoencoder_is_refused(latent_run, autoencoders, tmp_path):
    from ddpm.runs.load import load_run
    from ddpm.runs.train import train

    other = tmp_path / "run"
    (other / "checkpoints").mkdir(parents=True)
    cfg = OmegaConf.load(latent_run / "config.yaml")
    cfg.codec.autoencoder_ckpt = autoencoders[1]
    OmegaConf.save(cfg, other / "config.yaml")
    (other / "checkpoints" / "last.ckpt").write_bytes((latent_run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(ConfigError) as err:
        load_run(other / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and load_digest(autoencoders[0]) in message and load_digest(autoencoders[1]) in message
    with pytest.raises(ConfigError, match="trained with the autoencoder of digest"):  # a resume is refused too
        train(compose_train(*LATENT, f"codec.autoencoder_ckpt={autoencoders[1]}", "trainer.max_steps=3",
                            f"ckpt_path={latent_run}/checkpoints/last.ckpt", tmp_path=tmp_path / "resumed"))


def load_digest(path: str) -> str:
    from ddpm.runs.autoencoder_load import load_autoencoder

    return load_autoencoder(path)[1]["digest"]


@pytest.mark.parametrize("overrides, match", [
    ([], r"codec=autoencoder needs codec.autoencoder_ckpt="),
    (["data=mnist"], r"encodes 1x8x8 images but the data gives 1x28x28"),
    (["model.image_size=16"], r"model.image_size=16 but the autoencoder's latents are 4x8x8"),
    (["codec.scale_factor=-1"], r"codec.scale_factor=-1 is not allowed"),
    (["denoiser.clip_denoised=true"], r"denoiser.clip_denoised=true clips"),
])
def test_bad_latent_input_is_one_line(overrides, match, autoencoders, tmp_path):
    from ddpm.runs.build import build_module

    ckpt = [] if not overrides else [f"codec.autoencoder_ckpt={autoencoders[0]}"]
    with pytest.raises(Exception) as err:
        build_module(compose_train(*LATENT, *ckpt, *overrides, tmp_path=tmp_path))
    error = root_config_error(err.value)  # what the entry points print (Hydra wraps a constructor's error)
    assert error is not None and re.search(match, str(error)) and "\n" not in str(error)


def test_a_diffusion_checkpoint_given_as_the_autoencoder_is_one_line(latent_run, tmp_path):
    from ddpm.runs.build import build_module

    with pytest.raises(ConfigError, match="not of an autoencoder") as err:
        build_module(compose_train(*LATENT, f"codec.autoencoder_ckpt={latent_run}/checkpoints/last.ckpt", tmp_path=tmp_path))
    assert "\n" not in str(err.value)
