"""Runs written before the package was layered still load, and sample what they sampled then."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm.runs.legacy import upgrade_run_config
from ddpm.runs.load import load_run

LEGACY_RUN = Path(__file__).parent / "data" / "legacy_run"  # see its README.md


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
