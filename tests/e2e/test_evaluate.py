"""Evaluation (``ddpm.runs.evaluate``, what evaluate.py runs) on a tiny checkpoint of MNIST-format data: outputs, EMA
weights, sampler and denoiser options, samples_path mode, reference caching and files, NLL, and
one-line errors. A stand-in replaces Inception in-process (test_metrics.py checks the real
network); the CLI error path runs the real script."""

import json
import os
import re
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from support.runs import ROOT
from ddpm.data.pixels import to_uint8
from ddpm.diffusion.likelihood import dataset_bpd
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.sampling import chunk_seed
from ddpm.runs.build import build_module
from ddpm.runs.evaluate import evaluate
from ddpm.runs.load import load_run
from support.standins import StandIn, mnist_format_root


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory as train.py leaves it: config.yaml and checkpoints/last.ckpt (EMA != raw weights).
    Its data are random images in MNIST's file format (``data=mnist``: reference statistics, test split),
    so this runs without ../shared."""
    root = mnist_format_root(tmp_path_factory.mktemp("data"))
    run_dir = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=unet_tiny", "model.attn_resolutions=[14]", "schedule.num_timesteps=10", "data=mnist",
                                          f"data.root={root}", f"paths.output_dir={run_dir}"])
    module = build_module(cfg)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the EMA's zero-initialised output layer would output 0 at any precision
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the raw weights move away from the EMA copy
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir, module


@pytest.fixture
def standin():
    return StandIn()


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=["progress=false", "kid_subsets=2", "kid_subset_size=5", *overrides])


def test_a_checkpoint_is_sampled_from_its_ema_weights_and_scored(run, standin, tmp_path):
    run_dir, module = run
    cfg = config(f"ckpt_path={run_dir}/checkpoints/last.ckpt", "sampler=ddim", "sampler.steps=3", "sampler.eta=0.5",
                 "num_samples=6", "batch_size=4", "reference_count=50", f"reference_cache_dir={tmp_path}")
    result = evaluate(cfg, standin)

    out = run_dir / "eval" / "ddim_3_6"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.npz", "samples.png"]
    with np.load(out / "samples.npz") as f:
        assert f.files == ["images"] and f["images"].dtype == np.uint8 and f["images"].shape == (6, 28, 28, 1)
        images = f["images"]
    # chunks of batch_size, each seeded from (seed, chunk), through the module's EMA weights give the same images
    again = [module.sample(n, torch.Generator().manual_seed(chunk_seed(0, c)), sampler=DDIMSampler(3, eta=0.5))
             for c, n in ((0, 4), (1, 2))]
    assert np.array_equal(images, to_uint8(torch.cat(again)))
    raw = module.sample(4, torch.Generator().manual_seed(chunk_seed(0, 0)), use_ema=False, sampler=DDIMSampler(3, eta=0.5))
    assert not np.array_equal(images[:4], to_uint8(raw))  # and not the raw weights

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["sampler"] == "ddim" and written["steps"] == 3 and written["num_samples"] == 6
    assert written["sampler_config"]["eta"] == 0.5
    assert written["denoiser"] == {"prediction_type": "epsilon", "clip_denoised": True, "variance": "fixed_small"}
    assert written["seconds"] > 0 and written["images_per_second"] == pytest.approx(6 / written["seconds"])
    assert np.isfinite(written["fid"]) and np.isfinite(written["kid_mean"]) and written["kid_subset_size"] == 5
    assert written["is"] is None and written["is_reason"]
    assert [p.name for p in tmp_path.iterdir()] == ["mnist-train-n50-1x28px.npz"]


def test_metrics_none_samples_the_checkpoint_and_writes_the_samples_without_scores(run, tmp_path):
    # `python evaluate.py ckpt_path=RUN/checkpoints/last.ckpt metrics=[]`: no Inception, no reference, no data
    run_dir, module = run
    result = evaluate(config(f"ckpt_path={run_dir}/checkpoints/last.ckpt", "metrics=[]", "sampler=ddim", "sampler.steps=2",
                             "num_samples=3", "batch_size=2", "inception_weights=/nowhere", f"reference_cache_dir={tmp_path}"))
    out = run_dir / "eval" / "ddim_2_3"  # as for the same sampling with scores
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "samples.npz", "samples.png"]
    with np.load(out / "samples.npz") as f:
        images = f["images"]
    again = [module.sample(n, torch.Generator().manual_seed(chunk_seed(0, c)), sampler=DDIMSampler(2, eta=0.0))
             for c, n in ((0, 2), (1, 1))]
    assert images.shape == (3, 28, 28, 1) and np.array_equal(images, to_uint8(torch.cat(again)))
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (written["sampler"], written["steps"], written["num_samples"]) == ("ddim", 2, 3)
    assert not {"fid", "kid_mean", "is", "nll_bpd", "fd", "accuracy", "reference"} & set(written)
    assert list(tmp_path.iterdir()) == []  # no reference statistics were made


def test_samples_made_elsewhere_score_the_same_and_reuse_the_cached_reference(run, standin, tmp_path):
    run_dir, _ = run
    common = ["reference_count=50", f"reference_cache_dir={tmp_path}"]
    first = evaluate(config(f"ckpt_path={run_dir}/checkpoints/last.ckpt", "sampler=dpm_solver",
                            "sampler.steps=2", "num_samples=6", "batch_size=6", *common), standin)
    samples = run_dir / "eval" / "dpm_solver_2_6" / "samples.npz"
    calls, data_root = standin.calls, OmegaConf.load(run_dir / "config.yaml").data.root
    second = evaluate(config(f"samples_path={samples}", "data=mnist", f"data.root={data_root}", *common), standin)
    assert standin.calls == calls + 6  # the samples only: the reference came from the cache
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-12) and second["kid_mean"] == pytest.approx(first["kid_mean"])
    assert second["sampler"] is None and second["num_samples"] == 6
    assert (samples.parent / "samples_metrics" / "metrics.json").is_file()


def test_reference_files_may_hold_images_or_mu_sigma(run, standin, tmp_path):
    images = np.random.RandomState(0).randint(0, 256, (7, 28, 28, 1)).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", images=images)
    np.savez(tmp_path / "ref_images.npz", images[::-1].copy())  # the first array, unnamed
    by_images = evaluate(config(f"samples_path={tmp_path}/samples.npz", f"reference_path={tmp_path}/ref_images.npz"), standin)
    stats = FeatureStats.from_features(StandIn()(torch.from_numpy(images[::-1].copy()).permute(0, 3, 1, 2).expand(-1, 3, -1, -1))["pool3"].numpy())
    np.savez(tmp_path / "ref_stats.npz", mu=stats.mu, sigma=stats.sigma)
    by_stats = evaluate(config(f"samples_path={tmp_path}/samples.npz", f"reference_path={tmp_path}/ref_stats.npz", "out_dir=" + str(tmp_path / "o")), standin)
    assert by_images["fid"] == pytest.approx(0.0, abs=1e-9)  # the same images in another order
    assert by_stats["fid"] == pytest.approx(by_images["fid"], abs=1e-6)
    assert by_stats["kid_mean"] is None and "mu/sigma" in by_stats["kid_reason"]


def test_nll_of_the_checkpoint_on_test_images_needs_no_inception(run, tmp_path):
    run_dir, module = run
    nowhere = f"inception_weights={tmp_path}/nowhere.pth"  # a ConfigError if the Inception network were built
    result = evaluate(config(f"ckpt_path={run_dir}/checkpoints/last.ckpt", "metrics=[nll]", "num_samples=2",
                             "nll.num_images=3", "nll.batch_size=2", f"out_dir={tmp_path}", nowhere))
    assert result["nll_num_images"] == 3 and np.isfinite(result["nll_bpd"]) and result["nll_bpd"] > 0
    assert result["nll_bpd"] > result["nll_prior_bpd"] + result["nll_decoder_bpd"] - 1e-9
    assert "fid" not in result
    # where the bits go: L_t per t in a table and a figure, the 10 ranges of t in metrics.json
    rows = np.loadtxt(tmp_path / "nll_terms.csv", delimiter=",", skiprows=1)  # (T, 2): t, L_t
    assert rows.shape == (10, 2) and (rows[:, 0] == np.arange(10)).all()
    assert rows[0, 1] == pytest.approx(result["nll_decoder_bpd"], rel=1e-6)  # t = 0 is the decoder
    assert rows[:, 1].sum() + result["nll_prior_bpd"] == pytest.approx(result["nll_bpd"], rel=1e-6)
    assert list(result["nll_bpd_by_t_range"].values()) == pytest.approx(rows[:, 1], rel=1e-6)  # T = 10: one t each
    assert Path(result["nll_terms_png"]).stat().st_size > 0


def test_the_denoiser_can_be_changed_for_the_bound_and_for_sampling(run, standin, tmp_path):
    run_dir, module = run
    ckpt, large = f"ckpt_path={run_dir}/checkpoints/last.ckpt", "denoiser.variance=fixed_large"
    nll = evaluate(config(ckpt, "metrics=[nll]", "nll.num_images=3", "nll.batch_size=3", large))
    assert (run_dir / "eval" / "nll_fixed_large_3" / "metrics.json").is_file()  # named by the variance used
    assert nll["denoiser"]["variance"] == "fixed_large"
    test_set = instantiate(OmegaConf.load(run_dir / "config.yaml").data).test_dataset()  # the test split
    for variance in ("fixed_large", "fixed_small"):  # the bound of the changed denoiser, not of the run's
        expected = dataset_bpd(module.denoiser().replace(variance=variance), test_set, 3, 3, torch.Generator().manual_seed(0))
        assert (nll["nll_bpd"] == pytest.approx(expected["nll_bpd"], rel=1e-9)) == (variance == "fixed_large")

    images = np.random.RandomState(0).randint(0, 256, (4, 28, 28, 1)).astype(np.uint8)
    np.savez(tmp_path / "ref.npz", images=images)
    sampled = evaluate(config(ckpt, large, "denoiser.clip_denoised=false", "num_samples=4", "batch_size=4",
                              "metrics=[fid]", f"reference_path={tmp_path}/ref.npz"), standin)
    assert sampled["denoiser"] == {"prediction_type": "epsilon", "clip_denoised": False, "variance": "fixed_large"}
    with np.load(run_dir / "eval" / "ddpm_10_4_fixed_large_noclip" / "samples.npz") as f:  # beside the run's own
        images = f["images"]
    for variance in ("fixed_large", "fixed_small"):  # x_T and the noise of seed 0's chunk 0 through the changed denoiser
        g = torch.Generator().manual_seed(chunk_seed(0, 0))
        x_T = torch.randn((4, 1, 28, 28), generator=g)
        denoiser = module.denoiser().replace(variance=variance, clip_denoised=False)
        with torch.no_grad():
            expected = to_uint8(DDPMSampler()(denoiser, module.schedule, x_T, g))
        assert np.array_equal(images, expected) == (variance == "fixed_large")


def test_load_run_gives_the_weights_and_names_what_it_cannot_read(run, tmp_path):
    run_dir, module = run
    loaded_dir, cfg, loaded = load_run(run_dir / "checkpoints" / "last.ckpt", {"variance": "fixed_large", "clip_denoised": None})
    assert loaded_dir == run_dir and cfg.denoiser.variance == "fixed_large" and cfg.denoiser.clip_denoised is True
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))
    assert loaded.denoiser().variance == "fixed_large"
    assert not any(m.training for m in loaded.modules())  # dropout off, also for the bound
    with pytest.raises(ConfigError, match="variance='fixed_medium' is not allowed"):
        load_run(run_dir / "checkpoints" / "last.ckpt", {"variance": "fixed_medium"})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (tmp_path / "checkpoints" / "notes.ckpt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoints" / "other.ckpt")
    for name in ("notes.ckpt", "other.ckpt"):
        with pytest.raises(ConfigError, match=re.escape(f"ckpt_path='{tmp_path}/checkpoints/{name}' cannot be read")) as err:
            load_run(tmp_path / "checkpoints" / name)
        assert "\n" not in str(err.value)


def test_channels_last_and_bf16_sampling_give_nearly_the_fp32_images(run, standin, tmp_path):
    run_dir, _ = run
    common = [f"ckpt_path={run_dir}/checkpoints/last.ckpt", "sampler=ddim", "sampler.steps=3", "num_samples=4",
              "batch_size=4", "metrics=[fid]", "reference_count=50", f"reference_cache_dir={tmp_path}"]
    images = {}
    for name, extra in {"fp32": [], "fast": ["channels_last=true", "precision=bf16"]}.items():
        result = evaluate(config(*common, *extra, f"out_dir={tmp_path / name}"), standin)
        assert result["precision"] == ("bf16" if extra else "fp32")
        with np.load(tmp_path / name / "samples.npz") as f:
            images[name] = f["images"].astype(np.float64)
    diff = np.abs(images["fast"] - images["fp32"])
    assert 0 < diff.mean() < 4.0  # of 255 levels: bf16 rounding (so autocast was on), but the same images
    with pytest.raises(ConfigError, match="precision='fp16' is not allowed"):
        evaluate(config(*common, "precision=fp16", f"out_dir={tmp_path / 'bad'}"), standin)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ([], "give exactly one"),
        (["ckpt_path=a.ckpt", "samples_path=b.npz"], "give exactly one"),
        (["samples_path=b.npz", "metrics=[nll]"], "needs ckpt_path"),
        (["samples_path=b.npz", "metrics=[]"], r"^metrics=\[\] with samples_path=b.npz does nothing: name the metrics"),
        (["samples_path=b.npz", "metrics=[fid,ssim]"], "'ssim'"),
        (["samples_path=b.npz", "denoiser.variance=fixed_large"], "denoiser.variance=fixed_large changes how a checkpoint"),
        (["ckpt_path=/nowhere/checkpoints/last.ckpt", "metrics=[nll]"], "'/nowhere/checkpoints/last.ckpt' is not a checkpoint"),
    ],
)
def test_bad_requests_are_named(standin, overrides, match):
    with pytest.raises(ConfigError, match=match):
        evaluate(config(*overrides), standin)


def test_samples_without_a_reference_say_what_to_give(standin, tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    with pytest.raises(ConfigError, match="reference_path=FILE.npz"):
        evaluate(config(f"samples_path={tmp_path}/s.npz"), standin)


def test_missing_inception_weights_are_one_line_from_the_command_line(tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "DDPM_INCEPTION_WEIGHTS"}
    env["TORCH_HOME"] = str(tmp_path / "torch")  # an empty torch-fidelity cache
    proc = subprocess.run([sys.executable, "evaluate.py", f"samples_path={tmp_path}/s.npz", f"hydra.run.dir={tmp_path}/h"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Inception weights found")
    assert "DDPM_INCEPTION_WEIGHTS" in lines[0] and "inception_weights=FILE" in lines[0]
