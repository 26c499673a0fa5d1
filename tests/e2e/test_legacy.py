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


def test_the_old_checkpoint_samples_exactly_what_it_sampled_with_ddpm(legacy):
    module, expected = legacy
    assert isinstance(module.sampler, DDPMSampler)
    np.testing.assert_array_equal(sample(module, None), expected["ddpm"])


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
