"""The resolvers the config files use, registered with OmegaConf on import (``train.py`` imports this
module through ``ddpm.runs.train``; a run's saved ``config.yaml`` holds their resolved values).

``${ddpm.eq:A,B}``: whether two values are equal, so that a key that must agree with another is that
key, interpolated, not a second one a check compares: every net's
``learn_sigma: ${ddpm.eq:${oc.select:denoiser.variance,null},learned_range}`` (2C output channels exactly when the
denoiser learns the reverse variance).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def equal(a, b) -> bool:
    """``${ddpm.eq:A,B}``."""
    return a == b


if not OmegaConf.has_resolver("ddpm.eq"):
    OmegaConf.register_new_resolver("ddpm.eq", equal)
