"""process=edm and process=flow end to end through the real entry points: train a class-conditional net, resume it,
sample it with every continuous sampler under guidance, evaluate it; and what does not apply to a process is one line
before any work (issue 24's bad-input list)."""

import json
import re

import pytest
import torch

from support.runs import TINY, compose_train, run_here

# TINY without its VP option (schedule.num_timesteps): the continuous processes have no beta schedule
CONTINUOUS_TINY = [o for o in TINY if not o.startswith("schedule.")] + ["sampler.steps=2", "conditioning=class"]
# every solver once over the two processes (each is tested on every process in tests/unit/diffusion); None: the run's
SOLVERS = {"edm": (None, "heun", "dpmpp_2m"), "flow": ("euler", "dpmpp_3m", "euler_maruyama")}


def train(process: str, run_dir, *overrides: str, monkeypatch, capfd) -> tuple[int, str]:
    code, _, err = run_here("train.py", f"process={process}", *CONTINUOUS_TINY, f"hydra.run.dir={run_dir}", *overrides,
                            monkeypatch=monkeypatch, capfd=capfd)
    return code, err


@pytest.mark.parametrize("process", ["edm", "flow"])
def test_a_continuous_process_trains_resumes_samples_and_evaluates(process, tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    code, err = train(process, run_dir, "trainer.max_steps=4", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0, err
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["process"] == process and checkpoint["global_step"] == 4
    assert not any(k.startswith("schedule.") for k in checkpoint["state_dict"])  # no beta schedule
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_sigma0-0.111" in logged and "train/loss_sigma9-inf" in logged  # the loss by noise level

    code, err = train(process, run_dir, "trainer.max_steps=6", "ckpt_path=auto", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0, err
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    for solver in SOLVERS[process]:  # guided (the default scale), balanced labels
        out = tmp_path / str(solver)
        choice = [] if solver is None else [f"sampler={solver}"]  # none: the run's own (heun), its steps changed
        code, _, err = run_here("evaluate.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt", *choice,
                                "sampler.steps=2", "metrics=[]", "num_samples=4", "batch_size=4", f"out_dir={out}",
                                monkeypatch=monkeypatch, capfd=capfd)
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["process"] == process and metrics["sampler"] == (solver or "heun")
        assert metrics["nfe"] == (3 if solver in (None, "heun") else 2) and metrics["guidance_scale"] == 1.5


BAD = {  # (process, overrides, what the one line says)
    "a discrete sampler": ("edm", ["sampler=ddpm"], "sampler=ddpm applies to process=vp only"),
    "DDIM on flow": ("flow", ["sampler=ddim"], "sampler=ddim applies to process=vp only"),
    "a beta schedule": ("edm", ["schedule=cosine"], "schedule=cosine is an option of the VP chain"),
    "a VP schedule key": ("flow", ["schedule.num_timesteps=10"], "process=flow has no beta schedule"),
    "a learned variance": ("edm", ["denoiser.variance=learned_range"], "process=edm's denoiser has no variance"),
    "min-SNR": ("flow", ["loss.min_snr_gamma=5"], "process=flow's loss has no min_snr_gamma"),
    "a VP loss": ("edm", ["loss=simple"], "loss=SimpleLoss trains the discrete VP chain"),
    "flow matching on EDM": ("edm", ["loss=flow_matching"], "loss=flow_matching draws t in \\[0, 1\\]"),
    "sigma_min >= sigma_max": ("edm", ["process.sigma_min=80", "process.sigma_max=1"],
                               "process.sigma_min=80 >= process.sigma_max=1"),
    "rho <= 0": ("edm", ["sampler.rho=0"], "sampler.rho=0 is not allowed"),
    "churn < 0": ("flow", ["sampler.S_churn=-1"], "sampler.S_churn=-1 is not allowed"),
    "churn on DPM-Solver++": ("edm", ["sampler=dpmpp_2m", "sampler.S_churn=1"], "sampler.S_churn=1"),
    "an integer interval": ("edm", ["guidance.interval=[0.2,a]"], "guidance.interval"),
    "an experiment's VP key": ("edm", ["experiment=mnist_cpu"], "denoiser.prediction_type=v is not an option of "
                               "denoiser=ContinuousDenoiser \\(process=edm\\)"),
}


@pytest.mark.parametrize("case", BAD)
def test_what_does_not_apply_to_the_process_is_one_line_before_work(case, tmp_path, monkeypatch, capfd):
    process, overrides, message = BAD[case]
    code, err = train(process, tmp_path / "run", "trainer.max_steps=1", *overrides, monkeypatch=monkeypatch, capfd=capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_resumed_or_evaluated_as_another_process_is_one_line(tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "edm"
    assert train("edm", run_dir, "trainer.max_steps=1", monkeypatch=monkeypatch, capfd=capfd)[0] == 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    code, err = train("flow", tmp_path / "flow", "trainer.max_steps=2", f"ckpt_path={ckpt}", monkeypatch=monkeypatch,
                      capfd=capfd)
    assert code != 0 and "was trained with process=edm, but this run is process=flow" in err, err
    code, _, err = run_here("train.py", *TINY, "conditioning=class", f"hydra.run.dir={tmp_path / 'vp'}",
                            "trainer.max_steps=2", f"ckpt_path={ckpt}", monkeypatch=monkeypatch, capfd=capfd)
    assert code != 0 and "was trained with process=edm, but this run is process=vp" in err, err
    code, _, err = run_here("evaluate.py", f"ckpt_path={ckpt}", "metrics=[nll]", monkeypatch=monkeypatch, capfd=capfd)
    assert code != 0 and "metrics=[nll] is the discrete chain's variational bound (process=vp)" in err, err
    code, _, err = run_here("evaluate.py", f"ckpt_path={ckpt}", "metrics=[]", "denoiser.variance=fixed_large",
                            monkeypatch=monkeypatch, capfd=capfd)
    assert code != 0 and "denoiser.variance=fixed_large is an option of the VP chain's denoiser" in err, err


def test_vp_stays_the_default_and_composes_its_own_groups(tmp_path):
    cfg = compose_train(tmp_path=tmp_path)
    assert cfg.process._target_.endswith("VPProcess") and cfg.schedule is not None
    edm = compose_train("process=edm", tmp_path=tmp_path)
    assert "schedule" not in edm and edm.denoiser.prediction == "edm" and edm.loss._target_.endswith("EDMLoss")
    flow = compose_train("process=flow", tmp_path=tmp_path)
    assert flow.denoiser.prediction == "velocity" and flow.loss._target_.endswith("FlowMatchingLoss")


def test_the_fd_callback_samples_a_flow_run_with_its_own_sampler(tmp_path, monkeypatch):
    """callbacks=classifier_metrics samples with DDIM on VP; off VP with the run's sampler (DDIM is the chain's)."""
    from ddpm.evaluation import classifier as C
    from ddpm.runs.train import train as train_run

    monkeypatch.setitem(C.RECIPES, "digits", C.Recipe(width=4, feature_dim=8, epochs=1, holdout=0.2, shift=0))
    fd = ["callbacks=classifier_metrics", "callbacks.classifier_metrics.every_n_steps=2",
          "callbacks.classifier_metrics.num_samples=8", "callbacks.classifier_metrics.batch_size=8",
          f"callbacks.classifier_metrics.cache_dir={tmp_path / 'classifier'}"]
    trainer = train_run(compose_train("process=flow", *CONTINUOUS_TINY, *fd, "trainer.max_steps=2", tmp_path=tmp_path))
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "ClassifierMetricsCallback")
    assert callback.sampler is trainer.lightning_module.sampler and callback.sampler.name == "heun"
    assert "val/fd" in (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("process", ["edm", "flow"])
def test_a_continuous_run_resumed_mid_epoch_is_bit_identical(process, tmp_path):
    """The noise levels and eps of every step come from the per-step generator on every process, so a run resumed
    from step 4 ends with the uninterrupted run's weights, EMA and optimizer state, bit for bit."""
    from ddpm.runs.train import train as train_run

    run = [f"process={process}", *CONTINUOUS_TINY, "trainer.max_steps=8", "callbacks.checkpoint.every_n_train_steps=4",
           "callbacks.sample_grid=null"]
    train_run(compose_train(*run, tmp_path=tmp_path / "whole"))
    step4 = tmp_path / "whole" / "checkpoints" / "step_0000004.ckpt"
    train_run(compose_train(*run, f"ckpt_path={step4}", tmp_path=tmp_path / "resumed"))
    whole, resumed = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("whole", "resumed"))
    assert whole["global_step"] == resumed["global_step"] == 8 and resumed["process"] == process
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for index, state in whole["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer_states"][0]["state"][index][name]), (index, name)


def test_latent_diffusion_on_flow_trains_and_samples_latents(tmp_path):
    """codec=autoencoder on process=flow: the batch is encoded, the velocity net trained on latents, samples
    decoded to images; clipping x0_hat (pixels' range) is refused for latents as on VP."""
    from support.autoencoder_fixtures import save_autoencoder

    from ddpm.runs.build import build_module
    from ddpm.runs.train import train as train_run

    ae = save_autoencoder(tmp_path / "ae", 0, "data=digits", "model.base_channels=8", "model.channel_mult=[1]",
                          "model.norm_groups=4", "model.attention=false")
    latent = ["process=flow", *CONTINUOUS_TINY, "codec=autoencoder", f"codec.autoencoder_ckpt={ae}", "model=unet_latent",
              "model.base_channels=32", "model.num_res_blocks=1", "codec.scale_images=256", "trainer.max_steps=2"]
    with pytest.raises(Exception, match="denoiser.clip_denoised=true clips x0_hat to \\[-1, 1\\]"):
        build_module(compose_train(*latent, tmp_path=tmp_path / "clip"))
    trainer = train_run(compose_train(*latent, "denoiser.clip_denoised=false", tmp_path=tmp_path / "run"))
    module = trainer.lightning_module
    images = module.sample(3, torch.Generator().manual_seed(0), cond=torch.tensor([0, 1, 2]))
    assert module.sample_shape == (4, 8, 8) and images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
