"""The composed config checked up front, before anything is seeded, built, read or written.

Each entry of ``TRAIN`` / ``EVALUATE`` names a config key and a check of the value a user types
there; a key the composed config does not have (a points dataset has no ``data.num_workers``) is
skipped, and keys no entry names (options other groups add) are left to their constructors. A value
that fails is a ConfigError of one line, ``key=value is not allowed: use <what is allowed>``, so the
entry points print it before Lightning prints anything ("Seed set to 0", GPU/TPU lines). Checks
that need two keys (``sampler.steps`` against ``schedule.num_timesteps``) read the other from the
same config.

The run directory is checked earlier still, by ``ddpm.errors.run_dir_check`` (a Hydra callback).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError

_ABSENT = object()

# A check takes (value, config) and returns what is allowed when the value is not, else None.
Check = Callable[[object, DictConfig], "str | None"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(low: int, high: int | None = None, what: str = "") -> Check:
    """An integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    allowed = what or (f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}")
    return lambda v, cfg: None if _is_int(v) and v >= low and (high is None or v <= high) else allowed


def number(low: float, inclusive: bool = True, high: float | None = None, what: str = "") -> Check:
    """A finite number above ``low`` (or equal when ``inclusive``) and at most ``high``."""
    above = f">= {low}" if inclusive else f"> {low}"
    allowed = what or (f"a number {above}" + (f" and <= {high}" if high is not None else ""))

    def check(v, cfg):
        ok = _is_number(v) and (v >= low if inclusive else v > low) and (high is None or v <= high)
        return None if ok else allowed

    return check


def boolean(v, cfg) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*allowed) -> Check:
    text = "one of " + ", ".join(map(repr, allowed))
    return lambda v, cfg: None if v in allowed and type(v) in {type(a) for a in allowed} else text


def optional(check: Check, null: str = " (or null)") -> Check:
    """``check``, or null (``null``: how the message says so)."""

    def allowed(v, cfg):
        found = None if v is None else check(v, cfg)
        return None if found is None else f"{found}{null}"

    return allowed


def steps_within_schedule(v, cfg) -> str | None:
    """Sampler steps: an integer from 1 to the schedule's T (a subsequence of its timesteps)."""
    upper = OmegaConf.select(cfg, "schedule.num_timesteps", default=None)
    upper = upper if _is_int(upper) and upper >= 1 else None
    if _is_int(v) and v >= 1 and (upper is None or v <= upper):
        return None
    return f"an integer from 1 to schedule.num_timesteps={upper}" if upper else "a positive integer"


def existing_file(v, cfg) -> str | None:
    """A path to a file that exists and is readable (``~`` expanded); a URL (``s3://...``) is left
    to the reader, as are Lightning's ``last`` / ``best`` / ``hpc`` for ``ckpt_path``."""
    if not isinstance(v, str) or not v:
        return "a path to a file"
    if "://" in v or v in ("last", "best", "hpc"):
        return None
    path = Path(v).expanduser()
    if not path.exists():
        return f"a file that exists ('{path}' does not)"
    if not path.is_file():
        return f"a file, not a directory ('{path}')"
    if not os.access(path, os.R_OK):
        return f"a file you can read ('{path}' is not readable)"
    return None


def nonempty_file(v, cfg) -> str | None:
    """``existing_file``, and not 0 bytes (an .npz)."""
    missing = existing_file(v, cfg)
    if missing is None and Path(v).expanduser().is_file() and Path(v).expanduser().stat().st_size == 0:
        return f"a file that is not empty ('{Path(v).expanduser()}' is 0 bytes)"
    return missing


def checkpoint_or_auto(v, cfg) -> str | None:
    """``auto`` (the run directory's newest complete checkpoint, or a fresh start) or ``existing_file``."""
    if v == "auto":
        return None
    missing = existing_file(v, cfg)
    return None if missing is None else f"auto or {missing}"


def perceptual_weights(v, cfg) -> str | None:
    """``module.perceptual_path`` of an autoencoder with ``perceptual_weight > 0``: an existing file of VGG-16 weights."""
    if not OmegaConf.select(cfg, "module.perceptual_weight", default=0):
        return None
    missing = existing_file(v, cfg)
    return None if missing is None else f"{missing}: local VGG-16 weights, as module.perceptual_weight > 0"


def wandb_project(v, cfg) -> str | None:
    """``logger.project`` of ``logger=wandb``: a name W&B accepts, or null (``$WANDB_PROJECT``)."""
    from ddpm.training.logs.wandb_run import PROJECT_ALLOWED, is_project

    return None if v is None or is_project(v) else PROJECT_ALLOWED


# Lightning's precision values (2.x); the legacy 16 / 32 / 64 / "bf16" are accepted, not suggested.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
_LEGACY_PRECISIONS = (16, 32, 64, "16", "32", "64", "bf16", "transformer-engine", "transformer-engine-float16")


def precision(v, cfg) -> str | None:
    return None if v in PRECISIONS + _LEGACY_PRECISIONS else "one of " + ", ".join(PRECISIONS)


def accelerator(v, cfg) -> str | None:
    """A Lightning accelerator name (its registry's, plus ``gpu`` and ``auto``); an object is left to Lightning."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if not isinstance(v, str):
        return None if isinstance(v, DictConfig) else "one of auto, cpu, gpu, cuda, mps, tpu"
    names = sorted(AcceleratorRegistry.available_accelerators())
    return None if v in {"auto", "gpu", *names} else "one of " + ", ".join(["auto", "gpu", *names])


def _device_spec(v):
    """``trainer.devices`` as Lightning reads it: a string "2", "-1" or "0,1" (quoted on the command line)
    is a count or a list of indices; a list stays a list; anything else as it is."""
    if OmegaConf.is_list(v):
        return list(v)
    if isinstance(v, str) and v != "auto":
        try:
            ints = [int(p) for p in v.split(",") if p.strip()]
        except ValueError:
            return v
        return ints if "," in v else (ints[0] if ints else v)
    return v


def devices(v, cfg) -> str | None:
    """How many devices, or which: on the CPU a number of processes >= 1 (or auto); elsewhere also -1
    (every device) and a list of device indices. Whether the machine has them is Lightning's to say."""
    spec = _device_spec(v)
    if OmegaConf.select(cfg, "trainer.accelerator", default=None) == "cpu":
        ok = spec == "auto" or (_is_int(spec) and spec >= 1)
        return None if ok else "an integer >= 1 (CPU processes) or auto, as trainer.accelerator=cpu"
    ok = spec == "auto" or (_is_int(spec) and (spec >= 1 or spec == -1)) or (
        isinstance(spec, list) and len(spec) > 0 and all(_is_int(i) and i >= 0 for i in spec) and len(set(spec)) == len(spec))
    return None if ok else "an integer >= 1, -1 (every device), auto, or a list of device indices such as [0,1]"


def strategy(v, cfg) -> str | None:
    """A Lightning strategy name (its registry's, plus ``auto``); an object is left to Lightning."""
    from lightning.pytorch.strategies import StrategyRegistry

    if isinstance(v, DictConfig):
        return None
    names = StrategyRegistry.available_strategies()
    if v in {"auto", *names}:
        return None
    return "auto, ddp, ddp_spawn, fsdp, deepspeed or another name of lightning.pytorch.strategies.StrategyRegistry"


SEED = integer(0, 2**32 - 1)
TRAIN: tuple[tuple[str, Check], ...] = (
    ("seed", SEED),
    ("float32_matmul_precision", one_of("highest", "high", "medium")),
    ("ckpt_path", optional(checkpoint_or_auto, "")),  # empty or truncated: resolve_resume falls back or says so
    ("data.batch_size", integer(1)),
    ("data.num_workers", integer(0)),
    ("data.hflip", boolean),
    ("data.image_size", integer(1)),
    ("data.channels", one_of(1, 3)),
    ("data.num_points", integer(1)),
    ("schedule.num_timesteps", integer(1)),
    ("sampler.steps", optional(steps_within_schedule, " (or null: all T steps, the DDPM sampler)")),
    ("callbacks.fid.sampler.steps", steps_within_schedule),
    ("optimizer.lr", number(0, inclusive=False, what="a number > 0 such as 1e-3")),
    ("optimizer.weight_decay", number(0)),
    ("lr_schedule.warmup_steps", integer(0)),
    ("lr_schedule.decay_steps", optional(integer(1), " (or null: no decay; lr_schedule=cosine takes trainer.max_steps, "
                                                      "which must then be set)")),
    ("module.ema_decay", number(0, high=1, what="a number from 0 to 1 such as 0.999")),
    ("module.max_nonfinite_steps", integer(1)),
    # task=autoencoder (issue 15)
    ("module.reconstruction", one_of("l1", "l2")),
    ("module.kl_weight", number(0, what="a number >= 0 (LDM: 1e-6; 1e-6 to 1e-3 usual)")),
    ("module.perceptual_weight", number(0)),
    ("module.perceptual_path", perceptual_weights),
    ("module.disc_start", integer(0, what="an integer >= 0 (the step the discriminator starts at)")),
    ("module.disc_weight", number(0)),
    # codec=autoencoder (issue 15); a missing codec.autoencoder_ckpt (???) is named where the module is built
    ("codec.autoencoder_ckpt", existing_file),
    ("codec.scale_factor", lambda v, cfg: None if v == "auto" or number(0, inclusive=False)(v, cfg) is None
        else "auto (1/std of the training latents) or a number > 0 such as 0.18215"),
    ("codec.scale_images", integer(2)),
    ("codec.cache_latents", one_of(True, False, "auto")),
    ("codec.max_cache_bytes", integer(0)),
    ("trainer.max_steps", lambda v, cfg: None if v == -1 or integer(1)(v, cfg) is None
        else "an integer >= 1, or -1 (no step limit: trainer.max_epochs decides)"),
    ("trainer.accelerator", accelerator),
    ("trainer.devices", devices),
    ("trainer.num_nodes", integer(1)),
    ("trainer.strategy", strategy),
    ("trainer.precision", precision),
    ("trainer.max_epochs", optional(lambda v, cfg: None if v == -1 or integer(1)(v, cfg) is None
                                    else "an integer >= 1, or -1 (no epoch limit)", ", or null")),
    ("trainer.log_every_n_steps", integer(1)),
    ("trainer.accumulate_grad_batches", integer(1)),
    ("trainer.gradient_clip_val", optional(number(0))),
    ("callbacks.checkpoint.every_n_train_steps", optional(integer(0))),
    ("callbacks.sample_grid.every_n_steps", integer(0)),
    ("callbacks.stop_save.max_requeues", optional(integer(0))),
    ("callbacks.sample_grid.num_samples", integer(1)),
    ("logger.project", wandb_project),  # logger=wandb (no other logger has a project)
    ("logger.log_model", one_of(False, True, "all")),
)
EVALUATE: tuple[tuple[str, Check], ...] = (
    ("seed", SEED),
    ("samples_path", optional(nonempty_file, "")),
    ("reference_path", optional(nonempty_file, "")),
    ("num_samples", integer(1)),
    ("batch_size", integer(1)),
    ("devices", integer(1)),
    ("num_nodes", integer(1)),
    ("sampler.steps", optional(integer(1, what="an integer >= 1, at most the run's schedule.num_timesteps"),
                               " (or null: all T steps, the DDPM sampler)")),
    ("precision", one_of("fp32", "bf16")),
    ("progress", boolean),
    ("kid_features", integer(1)),
    ("kid_subsets", integer(1)),
    ("kid_subset_size", integer(1)),
    ("reference_count", optional(integer(1))),
    ("nll.num_images", integer(1)),
    ("nll.batch_size", integer(1)),
)


def check_config(cfg: DictConfig, spec: tuple[tuple[str, Check], ...]) -> None:
    """The first value of ``cfg`` that fails its check in ``spec``, as a one-line ConfigError."""
    for key, check in spec:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        allowed = check(value, cfg)
        if allowed is not None:
            raise ConfigError(f"{key}={value!r} is not allowed: use {allowed}")


def validate_train_config(cfg: DictConfig) -> None:
    """Types, ranges and cross-field checks of a composed ``conf/train.yaml`` (see ``TRAIN``)."""
    check_config(cfg, TRAIN)


def validate_evaluate_config(cfg: DictConfig) -> None:
    """Types and ranges of a composed ``conf/evaluate.yaml`` (see ``EVALUATE``). ``ckpt_path`` and the
    sampler's steps against the run's T are checked where the run is loaded (``ddpm.runs.load``)."""
    check_config(cfg, EVALUATE)
