"""Every option of every config group composes with the rest and instantiates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import ROOT, SHARED_DATA

CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides: str, tmp_path: Path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule_option_instantiates(name, tmp_path):
    cfg = compose_train(f"schedule={name}", tmp_path=tmp_path)
    assert instantiate(cfg.schedule).num_timesteps == cfg.schedule.num_timesteps


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_option_instantiates(name, tmp_path):
    assert callable(instantiate(compose_train(f"sampler={name}", tmp_path=tmp_path).sampler))


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_option_instantiates(name, tmp_path):
    import torch

    factory = instantiate(compose_train(f"optimizer={name}", tmp_path=tmp_path).optimizer)
    assert isinstance(factory([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


@pytest.mark.parametrize("name", [n for n in options("model") if n != "mlp"])
def test_model_option_builds_the_whole_module(name, tmp_path):
    from ddpm.runs.build import build_module

    data = {"unet_cifar10": "cifar10", "unet_mnist": "mnist", "unet_mnist_cpu": "mnist"}.get(name, "digits")
    cfg = compose_train(f"model={name}", f"data={data}", tmp_path=tmp_path)
    module = build_module(cfg)
    assert module.sample_shape == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_option_instantiates(name, tmp_path):
    # GPU trainers are built on the CPU here: the rest of their settings must still be valid.
    cfg = compose_train(f"trainer={name}", "trainer.accelerator=cpu", "trainer.devices=1", tmp_path=tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("name", options("logger"))
def test_logger_option_instantiates(name, tmp_path):
    cfg = compose_train(f"logger={name}", tmp_path=tmp_path)
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    assert logger is None if name == "none" else logger.save_dir == str(tmp_path)


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_option_instantiates(name, tmp_path):
    cfg = compose_train(f"callbacks={name}", tmp_path=tmp_path)
    assert all(instantiate(c) is not None for c in cfg.callbacks.values() if c is not None)


@pytest.mark.parametrize("name", options("data"))
def test_data_option_instantiates(name, tmp_path):
    root = {"folder": [f"data.root={tmp_path}"], "mnist": [f"data.root={SHARED_DATA}"]}.get(name, [])
    datamodule = instantiate(compose_train(f"data={name}", *root, tmp_path=tmp_path).data)
    assert datamodule.batch_size > 0


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_composes_and_builds_its_module(name, tmp_path):
    from ddpm.runs.build import build_module

    cfg = compose_train(f"experiment={name}", tmp_path=tmp_path)
    assert build_module(cfg) is not None


def test_cifar10_experiment_is_the_paper_recipe(tmp_path):
    cfg = compose_train("experiment=cifar10_ddpm", tmp_path=tmp_path)
    assert (cfg.data.batch_size, cfg.data.hflip, cfg.optimizer.lr, cfg.module.warmup_steps) == (128, True, 2e-4, 5000)
    assert (cfg.trainer.gradient_clip_val, cfg.model.dropout, cfg.module.ema_decay) == (1.0, 0.1, 0.9999)
    assert (cfg.schedule._target_, cfg.schedule.num_timesteps, cfg.schedule.beta_start, cfg.schedule.beta_end) == (
        "ddpm.diffusion.schedules.linear", 1000, 1e-4, 0.02)
    assert cfg.trainer.max_steps == 800_000 and cfg.denoiser.prediction_type == "epsilon"
    assert (cfg.model.base_channels, list(cfg.model.channel_mult), cfg.model.num_res_blocks, list(cfg.model.attn_resolutions)) == (
        128, [1, 2, 2, 2], 2, [16])
