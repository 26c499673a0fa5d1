"""Every option of every config group composes with the rest and instantiates; experiments are diffs."""

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from support.runs import CONF, SHARED_DATA, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def assert_built_from(obj, node) -> None:
    """``obj`` is an instance of the class ``node._target_`` names, with the node's other values as attributes."""
    assert isinstance(obj, get_class(node._target_))
    for key, value in node.items():
        if not key.startswith("_"):
            assert getattr(obj, key) == value, key


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule_option_instantiates(name, tmp_path):
    cfg = compose_train(f"schedule={name}", tmp_path=tmp_path)
    assert instantiate(cfg.schedule).num_timesteps == cfg.schedule.num_timesteps


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_option_instantiates(name, tmp_path):
    cfg = compose_train(f"sampler={name}", tmp_path=tmp_path)
    assert_built_from(instantiate(cfg.sampler), cfg.sampler)


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_option_instantiates(name, tmp_path):
    import torch

    factory = instantiate(compose_train(f"optimizer={name}", tmp_path=tmp_path).optimizer)
    assert isinstance(factory([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


@pytest.mark.parametrize("name", [n for n in options("model") if n != "mlp"])
def test_model_option_builds_the_whole_module(name, tmp_path):
    from ddpm.runs.build import build_module

    data = {"unet_cifar10": "cifar10", "ddpmpp_cifar10": "cifar10", "unet_mnist": "mnist", "unet_mnist_cpu": "mnist"}.get(name, "digits")
    # the paper-size DiTs with one block: building 12 (and their EMA copy) takes seconds; tests/test_dit.py counts them
    shallow = ["model.depth=1"] if name in ("dit_s2", "dit_b2") else []
    cfg = compose_train(f"model={name}", f"data={data}", *shallow, tmp_path=tmp_path)
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


DEFAULT_CALLBACKS = ["sample_grid", "checkpoint", "stop_save", "lr_monitor", "throughput", "progress_bar"]


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_option_instantiates(name, tmp_path):
    cfg = compose_train(f"callbacks={name}", tmp_path=tmp_path)
    # a one-callback file gives the key of its name; default.yaml lists those files, fid.yaml adds one
    assert list(cfg.callbacks) == {"default": DEFAULT_CALLBACKS, "fid": [*DEFAULT_CALLBACKS, "fid"],
                                  "classifier_metrics": [*DEFAULT_CALLBACKS, "classifier_metrics"],
                                  "autoencoder": [*DEFAULT_CALLBACKS, "reconstructions"]}.get(name, [name])
    for key, node in cfg.callbacks.items():
        if node is None:  # callbacks=autoencoder: reconstructions replace the sample grid
            assert (name, key) == ("autoencoder", "sample_grid")
            continue
        assert isinstance(instantiate(node), get_class(node._target_)), key


def test_default_callbacks_are_one_file_each_in_order(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from ddpm.runs.train import build_trainer
    from ddpm.training.callbacks.checkpoint import StepCheckpoint
    from ddpm.training.callbacks.progress import StepProgressBar
    from ddpm.training.callbacks.sample_grid import SampleGrid
    from ddpm.training.callbacks.throughput import Throughput

    cfg = compose_train(tmp_path=tmp_path)
    assert list(cfg.callbacks) == DEFAULT_CALLBACKS
    for key in DEFAULT_CALLBACKS:  # each is the whole of its own file
        assert cfg.callbacks[key] == OmegaConf.load(CONF / "callbacks" / f"{key}.yaml")[key]
    cfg = compose_train("callbacks.checkpoint.every_n_train_steps=3", "callbacks.progress_bar.refresh_rate=0",
                        "trainer.accelerator=cpu", tmp_path=tmp_path)
    classes = [SampleGrid, StepCheckpoint, LearningRateMonitor, Throughput, StepProgressBar]
    built = {type(c): c for c in build_trainer(cfg).callbacks}  # Lightning moves checkpointing last
    assert set(classes) <= set(built) and issubclass(StepCheckpoint, ModelCheckpoint)
    assert built[StepCheckpoint].dirpath == str(tmp_path / "checkpoints") and built[StepCheckpoint]._every_n_train_steps == 3
    assert built[Throughput].every_n_steps == built[Throughput].skip_steps == cfg.trainer.log_every_n_steps == 50
    assert built[StepProgressBar].refresh_rate == 0 and not built[StepProgressBar].is_enabled


@pytest.mark.parametrize("override", ["callbacks.sample_grid=null", "callbacks.sample_grid.every_n_steps=0"])
def test_a_callback_is_switched_off_or_set_from_the_command_line(override, tmp_path):
    node = compose_train(override, tmp_path=tmp_path).callbacks.sample_grid
    assert node is None if override.endswith("null") else node.every_n_steps == 0


def test_fid_callbacks_sample_with_the_ddim_sampler_file_at_100_steps(tmp_path):
    from ddpm.diffusion.samplers import DDIMSampler

    cfg = compose_train("callbacks=fid", tmp_path=tmp_path)
    fid = instantiate(cfg.callbacks.fid)
    ddim = OmegaConf.load(CONF / "sampler" / "ddim.yaml")
    assert isinstance(fid.sampler, DDIMSampler) and fid.sampler.steps == 100 and ddim.steps != 100
    assert (fid.sampler.eta, fid.sampler.spacing) == (ddim.eta, ddim.spacing)
    assert fid.every_n_steps == 5000 and fid.name == "val/fid_5k"
    assert cfg.sampler._target_ == "ddpm.diffusion.samplers.DDPMSampler"  # the module's own sampler is untouched


@pytest.mark.parametrize("name", options("data"))
def test_data_option_instantiates(name, tmp_path):
    root = {"folder": [f"data.root={tmp_path}"], "mnist": [f"data.root={SHARED_DATA}"]}.get(name, [])
    cfg = compose_train(f"data={name}", *root, tmp_path=tmp_path)
    datamodule = instantiate(cfg.data)  # nothing is read yet
    assert isinstance(datamodule, get_class(cfg.data._target_)) and datamodule.batch_size == cfg.data.batch_size
    image = cfg.data.get("image_size")
    assert datamodule.sample_shape == ((cfg.data.channels, image, image) if image else (2,))


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_composes_and_builds_its_module(name, tmp_path):
    from ddpm.runs.build import build_module
    from ddpm.training.module import DiffusionModule

    ae = []
    if name.startswith("ldm_"):  # step 2 of latent diffusion needs an autoencoder of its data (random weights here)
        from support.autoencoder_fixtures import save_autoencoder

        ae = [f"codec.autoencoder_ckpt={save_autoencoder(tmp_path / 'ae', 0, 'data=' + name.removeprefix('ldm_'))}"]
    cfg = compose_train(f"experiment={name}", *ae, tmp_path=tmp_path)
    module = build_module(cfg)
    if name.startswith("autoencoder_"):  # latent diffusion's first stage (task=autoencoder)
        from ddpm.training.autoencoder_module import AutoencoderModule

        assert isinstance(module, AutoencoderModule) and isinstance(module.autoencoder, get_class(cfg.model._target_))
        return
    assert isinstance(module, DiffusionModule) and isinstance(module.net, get_class(cfg.model._target_))
    steps = cfg.schedule.num_timesteps if cfg.get("schedule") else None  # process=edm|flow: no discrete schedule
    assert getattr(module.schedule, "num_timesteps", None) == steps and module.lr_schedule.keywords["warmup_steps"] == cfg.lr_schedule.warmup_steps
    assert_built_from(module.sampler, cfg.sampler)


def experiment_overrides(defaults: list) -> dict[str, str]:
    """An experiment's defaults list as command-line overrides: ``override /data: mnist`` -> {"data": "mnist"};
    another experiment it builds on (``- mnist_cfg``) -> {"experiment": "mnist_cfg"}."""
    out = {}
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_":
            out["experiment"] = entry
        elif entry != "_self_":
            ((key, value),) = entry.items()
            group = key.removeprefix("override ").lstrip("/")
            out[group if key.startswith("override ") else f"+{group}"] = value
    return out


def leaves(node: dict, prefix: str = ""):
    """(dotted key, value) for every value a YAML mapping sets; lists and empty mappings are values."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_sets_only_what_its_defaults_do_not_already_give(name, tmp_path):
    spec = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{name}.yaml"))
    groups = experiment_overrides(spec.pop("defaults", []))
    chosen = compose_train(tmp_path=tmp_path, return_hydra_config=True).hydra.runtime.choices
    restated = [f"{name}: override /{g}: {v} is train.yaml's choice already" for g, v in groups.items() if chosen.get(g) == v]
    base = compose_train(*(f"{g}={v}" for g, v in groups.items()), tmp_path=tmp_path)
    absent = object()
    for key, value in leaves(spec):
        if OmegaConf.select(base, key, default=absent) == value:
            restated.append(f"{name}: {key}={value!r} is what its defaults already give")
    assert not restated, "\n".join(restated)


def test_cifar10_experiment_is_the_paper_recipe(tmp_path):
    cfg = compose_train("experiment=cifar10_ddpm", tmp_path=tmp_path)
    assert (cfg.data.batch_size, cfg.data.hflip, cfg.optimizer.lr, cfg.lr_schedule.warmup_steps) == (128, True, 2e-4, 5000)
    assert (cfg.trainer.gradient_clip_val, cfg.model.dropout, cfg.module.ema_decay) == (1.0, 0.1, 0.9999)
    assert (cfg.schedule._target_, cfg.schedule.num_timesteps, cfg.schedule.beta_start, cfg.schedule.beta_end) == (
        "ddpm.diffusion.schedules.linear", 1000, 1e-4, 0.02)
    assert cfg.trainer.max_steps == 800_000 and cfg.denoiser.prediction_type == "epsilon"
    assert (cfg.model.base_channels, list(cfg.model.channel_mult), cfg.model.num_res_blocks, list(cfg.model.attn_resolutions)) == (
        128, [1, 2, 2, 2], 2, [16])


@pytest.mark.parametrize("name, process", [("cifar10_edm", "edm"), ("cifar10_flow", "flow")])
def test_cifar10_edm_and_flow_experiments_are_edms_recipe(name, process, tmp_path):
    import torch

    cfg = compose_train(f"experiment={name}", tmp_path=tmp_path, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices["process"], choices["model"], choices["data"], choices["trainer"]) == (
        process, "ddpmpp_cifar10", "cifar10", "gpu")
    batch = 512  # EDM (Karras et al. 2022, Table 7): durations in millions of images, at batch 512
    assert (cfg.data.batch_size, cfg.data.hflip, cfg.model.dropout, cfg.model.num_classes) == (batch, True, 0.13, None)
    adam = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.defaults["lr"], adam.defaults["betas"], adam.defaults["eps"]) == (1e-3, (0.9, 0.999), 1e-8)
    assert cfg.lr_schedule.warmup_steps == int(10e6 / batch) and cfg.lr_schedule.decay_steps is None  # 10 Mimg ramp-up
    assert cfg.trainer.max_steps == 200e6 / batch and cfg.trainer.gradient_clip_val is None  # 200 Mimg, no clipping
    assert cfg.module.ema_decay == pytest.approx(0.5 ** (batch / 0.5e6), abs=1e-8)  # half-life 0.5 Mimg
    assert cfg.module.ema_warmup
    assert (cfg.sampler.solver, cfg.sampler.steps) == ("heun", 18)  # 35 network evaluations
    assert cfg.loss.time == "logit_normal" if process == "flow" else (cfg.loss.p_mean, cfg.loss.p_std) == (-1.2, 1.2)
    assert compose_train(f"experiment={name}", "conditioning=class", tmp_path=tmp_path).model.num_classes == 10


@pytest.mark.parametrize("name", options("autoencoder"))
def test_autoencoder_option_builds_the_autoencoder_module(name, tmp_path):
    from ddpm.runs.build import build_module
    from ddpm.training.autoencoder_module import AutoencoderModule

    cfg = compose_train("task=autoencoder", f"autoencoder={name}", "data=mnist", tmp_path=tmp_path)
    module = build_module(cfg)
    assert isinstance(module, AutoencoderModule) and isinstance(module.autoencoder, get_class(cfg.model._target_))
    assert list(cfg.model.channel_mult) == OmegaConf.load(CONF / "autoencoder" / f"{name}.yaml").channel_mult


def test_an_autoencoder_run_composes_none_of_the_diffusion_groups(tmp_path):
    cfg = compose_train("experiment=autoencoder_mnist", tmp_path=tmp_path, return_hydra_config=True)
    assert not {"schedule", "denoiser", "loss", "sampler", "guidance", "text_encoder"} & set(cfg)
    assert cfg.hydra.runtime.choices["task"] == "autoencoder" and cfg.callbacks.sample_grid is None
    assert cfg.module._target_ == "ddpm.training.autoencoder_module.AutoencoderModule"


@pytest.mark.parametrize("overrides, message", [
    (["model=autoencoder_kl_f4", "module=diffusion"], "Could not find 'model/autoencoder_kl_f4'"),  # nets of one task
    (["autoencoder=kl_f4"], "Could not override 'autoencoder'"),
    (["module=autoencoder"], "Could not find 'module/autoencoder'"),
    (["task=autoencoder", "module=diffusion"], "Could not override 'module'"),
    (["task=autoencoder", "model=unet_small"], "Could not override 'model'"),
    (["experiment=autoencoder_mnist", "schedule=cosine"], "Could not override 'schedule'"),
])
def test_a_diffusion_config_cannot_compose_an_autoencoder_and_the_reverse(overrides, message, tmp_path):
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=message):
        compose_train(*overrides, tmp_path=tmp_path)


def test_a_saved_config_mixing_the_kinds_is_one_line_naming_both(tmp_path):
    from ddpm.errors import ConfigError
    from ddpm.runs.run_config import module_kind

    diffusion, autoencoder = (compose_train(*o, tmp_path=tmp_path) for o in ([], ["experiment=autoencoder_mnist"]))
    assert (module_kind(diffusion), module_kind(autoencoder)) == ("diffusion", "autoencoder")
    assert module_kind(compose_train("codec=autoencoder", tmp_path=tmp_path)) == "latent"
    mixed = diffusion.copy()
    mixed.model = autoencoder.model  # what `model=autoencoder_kl_f4 module=diffusion` composed before issue 23
    with pytest.raises(ConfigError, match=r"model._target_=ddpm.nets.autoencoder.KLAutoencoder is an autoencoder, "
                                          r"but module ddpm.training.module.DiffusionModule trains a denoiser"):
        module_kind(mixed)
    mixed = autoencoder.copy()
    mixed.model = diffusion.model
    with pytest.raises(ConfigError, match=r"model._target_=ddpm.nets.unet.UNet is not an autoencoder"):
        module_kind(mixed)


@pytest.mark.parametrize("variance, learned", [("fixed_small", False), ("fixed_large", False), ("learned_range", True)])
def test_the_nets_output_channels_follow_the_denoisers_variance(variance, learned, tmp_path):
    for model in options("model"):
        cfg = compose_train(f"model={model}", f"denoiser.variance={variance}", tmp_path=tmp_path)
        assert cfg.model.learn_sigma is learned, model  # one key, interpolated: never two to keep in step
    saved = tmp_path / "config.yaml"
    OmegaConf.save(cfg, saved, resolve=True)  # as train() saves a run's config
    assert OmegaConf.load(saved).model.learn_sigma is learned
