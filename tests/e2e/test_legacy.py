"""Runs written before the package was layered still load, and sample what they sampled then."""


import numpy as np
import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm.runs.legacy import upgrade_run_config
from ddpm.runs.load import load_run
from support.runs import DATA

LEGACY_RUN = DATA / "legacy_run"  # see its README.md


def targets(node) -> list[str]:
    if isinstance(node, dict):
        return ([node["_target_"]] if "_target_" in node else []) + [t for v in node.values() for t in targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in targets(v)]
    return []


def test_an_old_config_is_upgraded_to_importable_targets_and_a_denoiser_group():
    old = OmegaConf.load(LEGACY_RUN / "config.yaml")
    assert "ddpm.module.DiffusionModule" in targets(OmegaConf.to_container(old))
    new = OmegaConf.to_container(upgrade_run_config(old))
    for target in targets(new):
        get_object(target)  # every constructor named by the upgraded config exists
    assert new["denoiser"]["prediction_type"] == old.loss.prediction_type
    assert (new["denoiser"]["clip_denoised"], new["denoiser"]["variance"]) == (True, "fixed_small")
    assert "prediction_type" not in new["loss"] and "variance" not in new["sampler"]


@pytest.fixture(scope="module")
def legacy():
    run_dir, cfg, module = load_run(str(LEGACY_RUN / "checkpoints" / "last.ckpt"))
    return module, np.load(LEGACY_RUN / "expected_samples.npz")


def sample(module, sampler, variance=None):
    """module.sample, optionally with another reverse variance, from seed 0."""
    g = torch.Generator().manual_seed(0)
    if variance is None:
        return module.sample(16, g, sampler=sampler).numpy()
    x_T = torch.randn((16, *module.sample_shape), generator=g)
    denoiser = module.denoiser().replace(variance=variance)
    return sampler(denoiser, module.schedule, x_T, g).clamp(-1, 1).numpy()


# The stored samples were drawn on another machine. Same code, same seed, but the float32 sums in the
# net's matmuls are added in an order set by the CPU's SIMD width (AVX2 vs AVX-512), so a value can
# differ in its last bit or two: 1.2e-7 = one float32 ulp at 1 has been seen. The samples lie in
# [-1, 1], so a few ulp at unit scale bounds that; a real change (a sampler step, a variance, a
# schedule read in another precision) moves samples by 1e-5 or more (see the test below).
A_FEW_ULP_AT_ONE = 8 * np.finfo(np.float32).eps  # 9.5e-7


def test_the_old_checkpoint_samples_what_it_sampled_with_ddpm_to_a_few_ulp(legacy):
    module, expected = legacy
    assert isinstance(module.sampler, DDPMSampler)
    np.testing.assert_allclose(sample(module, None), expected["ddpm"], atol=A_FEW_ULP_AT_ONE, rtol=0)


def test_the_old_checkpoint_samples_bit_for_bit_the_same_twice_on_one_machine(legacy):
    module, _ = legacy
    np.testing.assert_array_equal(sample(module, None), sample(module, None))


@pytest.mark.parametrize("name, make, variance", [
    # these read abar and the fixed_large variance from float64 now (they read float32 buffers before)
    ("ddpm_large", DDPMSampler, "fixed_large"),
    ("ddim", lambda: DDIMSampler(5, eta=0.0), None),
    ("ddim_eta1", lambda: DDIMSampler(5, eta=1.0), None),
    ("dpm_solver", lambda: DPMSolverSampler(5), None),
])
def test_the_old_checkpoint_samples_what_it_sampled_with_the_other_samplers(legacy, name, make, variance):
    module, expected = legacy
    np.testing.assert_allclose(sample(module, make(), variance), expected[name], atol=1e-5, rtol=0)


def test_the_checkpoint_and_logger_targets_of_runs_before_issue_23_are_upgraded(tmp_path):
    from ddpm.runs.run_config import read_run_config

    old = OmegaConf.load(LEGACY_RUN / "config.yaml")
    old.trainer.plugins = [{"_target_": "ddpm.training.checkpoint_io.AtomicCheckpointIO"}]
    old.logger = {"_target_": "ddpm.training.wandb_run.wandb_logger", "save_dir": "."}
    old.loggers = [{"_target_": "ddpm.training.csv_logger.CSVLogger", "save_dir": "."}]  # each moved target, once
    OmegaConf.save(old, tmp_path / "config.yaml")
    new = read_run_config(tmp_path / "config.yaml")  # every target allow-listed: they all exist
    assert (new.trainer.plugins[0]._target_, new.logger._target_, new.loggers[0]._target_) == (
        "ddpm.training.checkpoints.AtomicCheckpointIO", "ddpm.training.logs.wandb_run.wandb_logger",
        "ddpm.training.logs.csv_logger.CSVLogger")


def test_an_autoencoder_run_saved_with_null_diffusion_groups_still_loads(tmp_path):
    """Before issue 23 an autoencoder run's config.yaml held schedule, denoiser, loss, sampler and guidance as
    null (the experiment set them so) and the module's own ``discriminator: null``."""
    from support.autoencoder_fixtures import write_autoencoder_run

    from ddpm.runs.autoencoder_load import load_autoencoder
    from ddpm.runs.run_config import module_kind, read_run_config

    ckpt = write_autoencoder_run(tmp_path / "ae")
    cfg = OmegaConf.load(tmp_path / "ae" / "config.yaml")
    for group in ("schedule", "denoiser", "loss", "sampler", "guidance"):
        cfg[group] = None
    OmegaConf.save(cfg, tmp_path / "ae" / "config.yaml")
    assert module_kind(read_run_config(tmp_path / "ae" / "config.yaml")) == "autoencoder"
    autoencoder, info = load_autoencoder(ckpt)
    assert info["latent_shape"] == (4, 4, 4) and not any(p.requires_grad for p in autoencoder.parameters())


def test_an_autoencoder_run_started_with_the_old_options_resumes_with_todays(tmp_path):
    """``module=autoencoder model=autoencoder_kl_f8 schedule=null ...`` (before issue 23) come back as
    ``task=autoencoder autoencoder=kl_f8``; a diffusion run's own ``guidance=null`` stays."""
    import yaml

    from support.runs import compose_train
    from ddpm.runs.legacy import upgrade_overrides
    from ddpm.runs.resume import expand_resume

    old = ["data=mnist", "module=autoencoder", "model=autoencoder_kl_f8", "schedule=null", "denoiser=null", "loss=null",
           "sampler=null", "guidance=null", "callbacks=autoencoder", "model.base_channels=16"]
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(old))
    args = expand_resume([f"resume={run_dir}"])
    assert args[:4] == ["data=mnist", "task=autoencoder", "autoencoder=kl_f8", "callbacks=autoencoder"]
    cfg = compose_train(*(a for a in args if not a.startswith("hydra.")), tmp_path=run_dir)
    assert cfg.module._target_ == "ddpm.training.autoencoder_module.AutoencoderModule"
    assert (list(cfg.model.channel_mult), cfg.model.base_channels, cfg.ckpt_path) == ([1, 2, 2, 4], 16, "auto")
    assert upgrade_overrides(["guidance=null", "model=unet_tiny"]) == ["guidance=null", "model=unet_tiny"]
