"""The autoencoder of latent diffusion (issue 15): shapes and padding, the KL, PSNR and the adaptive GAN weight
against hand computations, a tiny run through train -> resume -> evaluate, and its one-line refusals."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from support.autoencoder_fixtures import AE_TINY, write_autoencoder_run
from support.runs import CONF, TINY, compose_train
from ddpm.errors import ConfigError
from ddpm.evaluation.distances import check_metrics
from ddpm.evaluation.reconstruction import psnr
from ddpm.nets.autoencoder import KLAutoencoder, weights_digest
from ddpm.autoencoding.loss import adaptive_weight, hinge_d_loss, reconstruction_loss


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the module


def small(in_channels=1, image_size=28, **kw) -> KLAutoencoder:
    torch.manual_seed(0)
    return KLAutoencoder(in_channels, image_size, **{"base_channels": 8, "norm_groups": 4, "attention": False, **kw})


def test_mnist_is_padded_to_32_encoded_to_8x8_and_cropped_back():
    ae = small(channel_mult=(1, 2, 2))  # f = 4
    assert (ae.downsample_factor, ae.padded_size, ae.latent_shape) == (4, 32, (4, 8, 8))
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    padded = ae._pad(x)  # (2, 1, 32, 32): the digit in the middle, -1 (background) around it
    assert padded.shape == (2, 1, 32, 32) and torch.equal(padded[..., 2:30, 2:30], x)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (padded[..., border] == -1).all()
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.sample().shape == (2, 4, 8, 8)
    assert ae.decode(posterior.mode()).shape == (2, 1, 28, 28)
    reconstruction, _ = ae(x, sample_posterior=False)
    assert reconstruction.shape == x.shape
    g1, g2 = (torch.Generator().manual_seed(1) for _ in range(2))
    assert torch.equal(ae(x, generator=g1)[0], ae(x, generator=g2)[0])  # the posterior sample is the generator's
    assert small(channel_mult=(1, 2, 2, 2)).latent_shape == (4, 4, 4)  # f = 8: 28 -> 32 as well
    assert small(image_size=8, channel_mult=(1, 2)).latent_shape == (4, 4, 4)  # the digits at f = 2: no padding
    with pytest.raises(ConfigError, match=r"takes images of shape \[1, 28, 28\] but was given \[3, 28, 28\]"):
        ae.encode(torch.zeros(1, 3, 28, 28))  # an autoencoder of other data
    with pytest.raises(ConfigError, match="padded_size=30"):
        small(padded_size=30)


def test_kl_is_the_closed_form_against_the_standard_normal():
    posterior = small(image_size=8, channel_mult=(1, 2)).encode(torch.rand(3, 1, 8, 8) * 2 - 1)
    mu, logvar = posterior.mean.double(), posterior.logvar.double()  # (3, 4, 4, 4)
    expected = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))  # KL(N(mu, var) || N(0, I)), float64
    assert torch.allclose(posterior.kl().double(), expected, rtol=1e-5)


def test_psnr_is_ten_log10_of_one_over_the_mse_of_images_in_0_1():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x_hat = x + 0.3 * torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))  # some outside [-1, 1]
    a, b = (x.double() + 1) / 2, (x_hat.double().clamp(-1, 1) + 1) / 2
    expected = 10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))  # (4,)
    assert torch.allclose(psnr(x, x_hat).double(), expected, atol=1e-4)


def test_reconstruction_and_hinge_losses_by_hand():
    x, x_hat = torch.tensor([[[[0.5, -1.0]]]]), torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    assert reconstruction_loss(x, x_hat, "l1").item() == pytest.approx(0.5 + 2.0)
    assert reconstruction_loss(x, x_hat, "l2").item() == pytest.approx(0.25 + 4.0)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # 0.5 * (mean relu(1 - real) + mean relu(1 + fake)) = 0.5 * ((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    last = nn.Linear(3, 2, bias=False)  # the decoder's last layer, W (2, 3)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    out = last(x)  # (5, 2)
    rec, g = ((out - y) ** 2).sum(), -out.sum()
    W = last.weight.detach().double()
    grad_rec = 2 * (x.double() @ W.T - y.double()).T @ x.double()  # d/dW sum((xW^T - y)^2) = 2 (xW^T - y)^T x
    grad_g = -torch.ones(5, 2, dtype=torch.float64).T @ x.double()  # d/dW -sum(xW^T) = -1^T x
    expected = grad_rec.norm() / (grad_g.norm() + 1e-4)
    assert adaptive_weight(rec, g, last.weight).item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_digest_names_the_weights():
    a, b = small(image_size=8, channel_mult=(1, 2)), small(image_size=8, channel_mult=(1, 2))
    assert weights_digest(a) == weights_digest(b)  # same seed, same weights
    with torch.no_grad():
        b.vae.decoder.conv_out.bias[0] += 1e-3
    assert weights_digest(a) != weights_digest(b)


def test_a_tiny_run_trains_resumes_and_evaluates(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from ddpm.evaluation import classifier as C
    from ddpm.runs.autoencoder_load import load_autoencoder
    from ddpm.runs.evaluate import evaluate
    from ddpm.runs.train import train
    from support.standins import StandIn
    from support.classifier import SMALL

    run = tmp_path / "run"
    gan = ["module/discriminator=patchgan", "module.discriminator.channels=8", "module.discriminator.num_layers=1",
           "module.disc_start=3"]
    train(compose_train(*AE_TINY, *gan, "trainer.max_steps=2", tmp_path=run))
    train(compose_train(*AE_TINY, *gan, "trainer.max_steps=4", "ckpt_path=auto", tmp_path=run))  # resumed in place
    assert "(step 2), its newest complete checkpoint" in capsys.readouterr().out
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4  # autoencoder steps: the discriminator's (from step 3) are not counted
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("autoencoder.vae.") for k in keys) and any(k.startswith("discriminator.") for k in keys)
    assert len(ckpt["optimizer_states"]) == 2
    assert (run / "samples" / "reconstructions_step_0000004.png").exists()
    logged = (run / "csv" / "metrics.csv").read_text()
    assert "val/psnr" in logged and "train/d_loss" in logged and "train/adaptive_weight" in logged
    ae, info = load_autoencoder(run / "checkpoints" / "last.ckpt")
    assert info["latent_shape"] == (4, 4, 4) and not any(p.requires_grad for p in ae.parameters())

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt_path={run}/checkpoints/last.ckpt", "metrics=[psnr,fd,fid]", "num_samples=40", "batch_size=16",
            f"out_dir={tmp_path / 'eval'}", "progress=false", f"classifier_cache_dir={tmp_path / 'cls'}"])
    with pytest.MonkeyPatch.context() as mp:  # the digits classifier of test_classifier_metrics' small recipe (~2 s)
        mp.setitem(C.RECIPES, "digits", SMALL)
        result = evaluate(cfg, feature_extractor=StandIn())
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == result
    saved = np.load(tmp_path / "eval" / "reconstructions.npz")
    originals, reconstructions = saved["originals"], saved["reconstructions"]
    assert originals.shape == reconstructions.shape == (40, 8, 8, 1) and originals.dtype == np.uint8
    a, b = originals / 255.0, reconstructions / 255.0  # PSNR of the 8-bit files: the float one up to rounding
    assert result["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / ((a - b) ** 2).mean(axis=(1, 2, 3)))), abs=0.3)
    assert result["num_images"] == 40 and result["fd"] >= 0 and result["fid"] >= 0
    assert result["autoencoder"]["digest"] == info["digest"]


def test_one_line_refusals(tmp_path):
    from ddpm.runs.autoencoder_load import load_autoencoder
    from ddpm.runs.build import build_module
    from ddpm.runs.validate import validate_train_config

    cfg = compose_train(*AE_TINY, tmp_path=tmp_path)
    for key, value, message in (("kl_weight", -1, "module.kl_weight=-1 is not allowed"),
                                ("reconstruction", "huber", "module.reconstruction='huber' is not allowed"),
                                ("disc_start", -5, "module.disc_start=-5 is not allowed"),
                                ("perceptual_weight", 1.0, "module.perceptual_path=None is not allowed")):
        bad = cfg.copy()
        bad.module[key] = value
        with pytest.raises(ConfigError, match=message):
            validate_train_config(bad)
    bad = cfg.copy()
    bad.model.image_size = 16
    with pytest.raises(ConfigError, match=r"takes images of shape \[1, 16, 16\].*but the data's are \[1, 8, 8\]"):
        build_module(bad)  # an autoencoder of other data
    # a diffusion checkpoint where an autoencoder is expected
    diffusion = tmp_path / "diffusion"
    cfg = compose_train(*TINY, tmp_path=diffusion)
    (diffusion / "checkpoints").mkdir(parents=True)
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, diffusion / "config.yaml", resolve=True)
    torch.save({"state_dict": build_module(cfg).state_dict()}, diffusion / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="is a checkpoint of ddpm.training.module.DiffusionModule, not of an autoencoder"):
        load_autoencoder(diffusion / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint in <run>/checkpoints/"):
        load_autoencoder(tmp_path / "nowhere.ckpt")
    # metrics of the other kind of checkpoint
    with pytest.raises(ConfigError, match=r"\['psnr'\]; psnr measures an autoencoder's reconstructions"):
        check_metrics(["fid", "psnr"])
    with pytest.raises(ConfigError, match=r"\['is', 'nll'\]; this checkpoint is an autoencoder"):
        check_metrics(["psnr", "is", "nll"], autoencoder=True)
    ckpt = write_autoencoder_run(tmp_path / "ae")
    assert load_autoencoder(ckpt)[1]["channels"] == 1


def test_learning_rate_warms_up_then_falls_along_a_cosine(tmp_path):
    import math

    from ddpm.runs.build import build_module

    module = build_module(compose_train(*AE_TINY, "lr_schedule=cosine", "lr_schedule.warmup_steps=10",
                                        "trainer.max_steps=100", tmp_path=tmp_path))  # the cosine ends at max_steps
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for k in range(100):
        expected = 1e-3 * min(1.0, (k + 1) / 10) * 0.5 * (1 + math.cos(math.pi * k / 100))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9), k
        optimizer.step()
        scheduler.step()
