"""A small recipe of the dataset classifier (ddpm.evaluation.classifier) that trains on the digits in about a
second, and the data module it trains on; the full recipe's numbers are in benchmarks/RESULTS.md."""

import functools

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ddpm.evaluation import classifier as C
from support.runs import CONF

SMALL = C.Recipe(width=8, feature_dim=16, epochs=12, batch_size=128, lr=2e-2, holdout=0.2, shift=1)


@functools.lru_cache
def datamodule(name: str = "digits"):
    """The ``ImageDataModule`` of ``conf/data/<name>.yaml`` (composed once; its datasets are built per call)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return instantiate(compose("train", overrides=[f"data={name}"]).data)
