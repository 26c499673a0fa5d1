"""Build the objects of a run from its composed config: the one place train and evaluation share."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.runs.autoencoder_load import load_autoencoder
from ddpm.runs.build_autoencoder import build_autoencoder_module
from ddpm.runs.run_config import module_kind
from ddpm.training.module import DiffusionModule


def build_module(cfg: DictConfig, datamodule=None) -> DiffusionModule:
    """The module of a train config, of the kind ``module_kind`` names: for ``diffusion`` and ``latent`` the
    DiffusionModule (groups model, schedule, denoiser, loss, sampler, optimizer, guidance, module; a
    latent one with its frozen autoencoder), for ``autoencoder`` the AutoencoderModule
    (``build_autoencoder_module``).

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
    text_encoder, model_args = build_text_encoder(cfg)
    latent = build_latent(cfg, shape, model_args) if kind == "latent" else {}  # the frozen autoencoder
    if latent:
        shape = latent["autoencoder_info"]["latent_shape"]  # the diffusion runs on (c, h, w) latents
    return instantiate(
        cfg.module,
        _convert_="all",  # plain lists in the hyperparameters, so checkpoints load with weights_only
        sample_shape=list(shape),
        net=instantiate(cfg.model, **model_args),
        text_encoder=text_encoder,
        schedule=instantiate(cfg.schedule),
        denoiser=instantiate(cfg.denoiser),
        loss=instantiate(cfg.loss),
        sampler=instantiate(cfg.sampler),
        optimizer=instantiate(cfg.optimizer),
        guidance=instantiate(cfg.guidance) if cfg.get("guidance") else None,  # runs from before guidance: None
        **latent,
    )


def build_latent(cfg: DictConfig, image_shape, model_args: dict) -> dict:
    """For ``module=latent``: the module's ``autoencoder``, ``autoencoder_info`` and ``image_shape`` (the
    data's), the frozen autoencoder loaded by ``ddpm.runs.autoencoder_load.load_autoencoder``.

    ``module.autoencoder_ckpt`` becomes the resolved path in ``cfg`` itself, so the run's saved config
    names the file wherever it is evaluated from. The network takes the latents: ``model.in_channels``
    and ``model.image_size`` set to null are filled in from the latent shape (c, h, w) (into
    ``model_args``); values that differ from it are a ConfigError.
    """
    if OmegaConf.is_missing(cfg.module, "autoencoder_ckpt") or not cfg.module.autoencoder_ckpt:
        raise ConfigError("module=latent needs module.autoencoder_ckpt=RUN/checkpoints/last.ckpt, the checkpoint of an "
                          "autoencoder run (python train.py experiment=autoencoder_mnist)")
    autoencoder, info = load_autoencoder(cfg.module.autoencoder_ckpt)
    cfg.module.autoencoder_ckpt = info["path"]
    c, h, w = info["latent_shape"]
    for key, value in (("in_channels", c), ("image_size", h)):
        given = cfg.model.get(key, value)
        if given is None:
            model_args[key] = value
        elif given != value:
            raise ConfigError(f"model.{key}={given} but the autoencoder's latents are {c}x{h}x{w} (module.autoencoder_ckpt="
                              f"{info['path']}): set model.{key}={value}, or null to take it from the autoencoder")
    return {"autoencoder": autoencoder, "autoencoder_info": info, "image_shape": list(image_shape)}


def build_text_encoder(cfg: DictConfig):
    """(the text encoder of ``cfg.text_encoder`` or None, extra model arguments): a text encoder sets the
    network's ``context_dim`` to its embedding width unless the model config gives one."""
    if not cfg.get("text_encoder"):
        return None, {}
    if "context_dim" not in cfg.model:
        raise ConfigError(f"text_encoder= needs a network with cross-attention, but model {cfg.model._target_} has none "
                          "(model.context_dim): use a U-Net or DiT model")
    if cfg.model.get("num_classes") is not None:
        raise ConfigError(f"text_encoder= with model.num_classes={cfg.model.num_classes}: a model is conditioned on "
                          "class labels or on text, not both: set model.num_classes=null")
    encoder = instantiate(cfg.text_encoder)
    return encoder, ({"context_dim": encoder.dim} if cfg.model.get("context_dim") is None else {})


def check_conditional_data(cfg: DictConfig) -> None:
    """A conditional model that takes ``num_classes`` from data that does not know it yet (a folder:
    one class per sub-folder, counted only when it is read) is a ConfigError asking for the number."""
    model = cfg.get("model")
    if model is None or "num_classes" not in model or not OmegaConf.is_interpolation(model, "num_classes"):
        return
    if cfg.data.get("num_classes") is None:
        raise ConfigError("model.num_classes=${data.num_classes} but the data has no class labels (data.num_classes="
                          "null): a class-conditional model needs the number of classes, e.g. data.num_classes=K "
                          "for a folder of K sub-folders, or a labelled dataset (digits, mnist, cifar10, gaussians8)")
