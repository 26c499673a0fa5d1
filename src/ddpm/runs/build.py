"""Build the objects of a run from its composed config: the one place train and evaluation share."""

from __future__ import annotations

import inspect

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.runs.autoencoder_load import load_autoencoder
from ddpm.runs.build_autoencoder import build_autoencoder_module
from ddpm.runs.run_config import VP_TARGET, module_kind, process_choice
from ddpm.training.conditioning import Conditioning, Unconditional
from ddpm.training.module import DiffusionModule


def build_module(cfg: DictConfig, datamodule=None) -> DiffusionModule:
    """The module of a train config, of the kind ``module_kind`` names: for ``diffusion`` and ``latent`` the
    DiffusionModule (groups model, schedule, denoiser, loss, sampler, optimizer, lr_schedule, guidance,
    conditioning, codec, module), for ``autoencoder`` the AutoencoderModule (``build_autoencoder_module``).

    ``module.sample_shape: null`` takes the shape of one sample from the datamodule (built from
    ``cfg.data`` when not given; nothing is read from disk).
    """
    kind = module_kind(cfg)
    if kind == "autoencoder":  # latent diffusion's first stage
        return build_autoencoder_module(cfg, datamodule)
    check_conditional_data(cfg)
    shape = cfg.module.get("sample_shape")
    if shape is None:
        shape = (datamodule if datamodule is not None else instantiate(cfg.data)).sample_shape
    conditioning = instantiate(cfg.conditioning) if cfg.get("conditioning") else Unconditional()
    model_args = net_args(cfg, conditioning)
    codec = build_codec(cfg, shape, model_args) if kind == "latent" else None  # the frozen autoencoder; None: pixels
    if codec is not None:
        shape = codec.latent_shape  # the diffusion runs on (c, h, w) latents
    for group in ("denoiser", "loss"):
        check_option_keys(cfg, group)
    schedule = instantiate(cfg.schedule) if cfg.get("schedule") is not None else None
    return instantiate(
        cfg.module,
        _convert_="all",  # plain lists in the hyperparameters, so checkpoints load with weights_only
        sample_shape=list(shape),
        net=instantiate(cfg.model, **model_args),
        conditioning=conditioning,
        codec=codec,
        schedule=schedule,
        process=build_process(cfg),
        denoiser=instantiate(cfg.denoiser),
        loss=instantiate(cfg.loss),
        sampler=instantiate(cfg.sampler),
        optimizer=instantiate(cfg.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        guidance=instantiate(cfg.guidance) if cfg.get("guidance") else None,  # runs from before guidance: None
    )


def check_option_keys(cfg: DictConfig, group: str) -> None:
    """A key of ``cfg[group]`` its constructor does not take is one line (an experiment's VP option, e.g.
    ``denoiser.prediction_type: v``, composed with ``process=flow``, whose denoiser has no such key)."""
    node = cfg.get(group)
    target = None if node is None else node.get("_target_")
    if not isinstance(target, str):
        return
    parameters = inspect.signature(get_object(target)).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    extra = [k for k in node if not k.startswith("_") and k not in parameters]
    if extra:
        raise ConfigError(f"{group}.{extra[0]}={node[extra[0]]} is not an option of {group}={target.rpartition('.')[2]} "
                          f"(process={process_choice(cfg)}): it takes {', '.join(k for k in parameters if k not in ('net', 'schedule', 'process'))}")


def build_process(cfg: DictConfig):
    """The run's Gaussian path (``conf/process/``): None for VP (the module builds ``VPProcess`` on its schedule;
    also runs from before the process group, which have no ``process`` node), else ``EDMProcess`` or
    ``FlowProcess``. A schedule without VP, or VP without one, is the module's one line (``check_process``)."""
    node = cfg.get("process")
    return None if node is None or node.get("_target_") == VP_TARGET else instantiate(node)


def net_args(cfg: DictConfig, conditioning: Conditioning) -> dict:
    """The network's ``num_classes`` / ``context_dim`` as the conditioning decides them (filled in where the
    model config leaves them null); a model that cannot take the condition, or that names another, is one line."""
    wanted, args = conditioning.net_args(), {}
    choice = OmegaConf.select(cfg, "conditioning._target_", default="Unconditional").rpartition(".")[2]
    for key in ("num_classes", "context_dim"):
        given = cfg.model.get(key)
        if key in wanted and key not in cfg.model:
            raise ConfigError(f"conditioning={choice} needs a network that takes it (model.{key}), but model "
                              f"{cfg.model._target_} has none: use a U-Net or DiT model")
        if given is None and key in wanted:
            args[key] = wanted[key]
        elif given is not None and given != wanted.get(key):
            raise ConfigError(f"model.{key}={given} but conditioning={choice} gives the net {key}={wanted.get(key)}: "
                              "choose what the model is conditioned on with conditioning=none|class|text_small|"
                              f"text_clip|text_embeddings and leave model.{key} to it")
    return args


def build_codec(cfg: DictConfig, image_shape, model_args: dict):
    """For ``codec=autoencoder`` (a codec config with ``autoencoder_ckpt``): the ``LatentCodec`` of the frozen
    autoencoder loaded by ``ddpm.runs.autoencoder_load.load_autoencoder``; None for pixels (the module's default).

    ``codec.autoencoder_ckpt`` becomes the resolved path in ``cfg`` itself, so the run's saved config
    names the file wherever it is evaluated from. The network takes the latents: ``model.in_channels``
    and ``model.image_size`` set to null are filled in from the latent shape (c, h, w) (into
    ``model_args``); values that differ from it are a ConfigError.
    """
    node = cfg.codec
    if OmegaConf.is_missing(node, "autoencoder_ckpt") or not node.autoencoder_ckpt:
        raise ConfigError("codec=autoencoder needs codec.autoencoder_ckpt=RUN/checkpoints/last.ckpt, the checkpoint of an "
                          "autoencoder run (python train.py experiment=autoencoder_mnist)")
    autoencoder, info = load_autoencoder(node.autoencoder_ckpt)
    node.autoencoder_ckpt = info["path"]
    c, h, w = info["latent_shape"]
    for key, value in (("in_channels", c), ("image_size", h)):
        given = cfg.model.get(key, value)
        if given is None:
            model_args[key] = value
        elif given != value:
            raise ConfigError(f"model.{key}={given} but the autoencoder's latents are {c}x{h}x{w} (codec.autoencoder_ckpt="
                              f"{info['path']}): set model.{key}={value}, or null to take it from the autoencoder")
    return instantiate(node, _convert_="all", autoencoder=autoencoder, autoencoder_info=info, image_shape=list(image_shape))


def check_conditional_data(cfg: DictConfig) -> None:
    """A conditional model that takes ``num_classes`` from data that does not know it yet (a folder:
    one class per sub-folder, counted only when it is read) is a ConfigError asking for the number."""
    node = cfg.get("conditioning")
    if node is None or "num_classes" not in node or not OmegaConf.is_interpolation(node, "num_classes"):
        return
    if cfg.data.get("num_classes") is None:
        raise ConfigError("conditioning.num_classes=${data.num_classes} but the data has no class labels (data.num_classes="
                          "null): a class-conditional model needs the number of classes, e.g. data.num_classes=K "
                          "for a folder of K sub-folders, or a labelled dataset (digits, mnist, cifar10, gaussians8)")
