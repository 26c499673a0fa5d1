"""Build the objects of a run from its composed config: the one place train and evaluation share."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm.training.module import DiffusionModule


def build_module(cfg: DictConfig, datamodule=None) -> DiffusionModule:
    """The DiffusionModule of a train config (groups model, schedule, denoiser, loss, sampler, optimizer, module).

    ``module.sample_shape: null`` takes the shape of one sample from the datamodule (built from
    ``cfg.data`` when not given; nothing is read from disk).
    """
    shape = cfg.module.get("sample_shape")
    if shape is None:
        shape = (datamodule if datamodule is not None else instantiate(cfg.data)).sample_shape
    return instantiate(
        cfg.module,
        _convert_="all",  # plain lists in the hyperparameters, so checkpoints load with weights_only
        sample_shape=list(shape),
        net=instantiate(cfg.model),
        schedule=instantiate(cfg.schedule),
        denoiser=instantiate(cfg.denoiser),
        loss=instantiate(cfg.loss),
        sampler=instantiate(cfg.sampler),
        optimizer=instantiate(cfg.optimizer),
    )
