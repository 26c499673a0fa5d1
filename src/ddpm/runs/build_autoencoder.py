"""Build the autoencoder of latent diffusion's first stage from a composed train config (``task=autoencoder``).

An autoencoder run composes none of the diffusion groups (schedule, denoiser, loss, sampler, guidance,
text_encoder: ``conf/task/autoencoder.yaml``); runs saved before that hold them as null. This builder
never reads them.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from ddpm.errors import ConfigError, unwrapped_config_errors
from ddpm.training.autoencoder_module import AutoencoderModule


def build_autoencoder_module(cfg: DictConfig, datamodule=None) -> AutoencoderModule:
    """The AutoencoderModule of a train config (groups model, optimizer, module; ``module.discriminator``
    the patch discriminator or null).

    With a discriminator the module optimizes by hand, where Lightning neither clips nor accumulates:
    ``trainer.gradient_clip_val`` moves into ``module.gradient_clip_val`` (in ``cfg`` itself, so the
    run's saved config says so); ``trainer.accumulate_grad_batches`` other than 1 and fp16 (16-mixed) are
    ConfigErrors.
    """
    shape = cfg.module.get("sample_shape")
    if shape is None:
        shape = (datamodule if datamodule is not None else instantiate(cfg.data)).sample_shape
    if cfg.module.get("discriminator"):
        if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} cannot train "
                              "an autoencoder with a discriminator (two optimizers stepped by hand): use 1")
        if str(cfg.trainer.get("precision")).startswith("16"):
            raise ConfigError(f"trainer.precision={cfg.trainer.precision} cannot train an autoencoder with a "
                              "discriminator (its optimizer is stepped outside fp16's gradient scaler): use bf16-mixed or 32-true")
        if cfg.trainer.get("gradient_clip_val"):
            with open_dict(cfg):
                if cfg.module.get("gradient_clip_val") is None:
                    cfg.module.gradient_clip_val = cfg.trainer.gradient_clip_val
                cfg.trainer.gradient_clip_val = None
    with unwrapped_config_errors():  # a bad value is the user's one line, not Hydra's wrapping of it
        return instantiate(
            cfg.module,
            _convert_="all",  # plain lists in the hyperparameters, so checkpoints load with weights_only
            sample_shape=list(shape),
            autoencoder=instantiate(cfg.model),
            optimizer=instantiate(cfg.optimizer),
            lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        )
