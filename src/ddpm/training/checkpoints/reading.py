"""Reading a checkpoint a user names: tensors and plain containers only, never unpickled code.

``torch.load(weights_only=True)`` refuses any pickle that would import or call something other than
tensor rebuilders and plain containers, so a crafted file cannot run code. Both readers of a user's
checkpoint use this: ``ddpm.runs.load`` (evaluation, the autoencoder of a latent run) and the resume in ``trainer.fit``.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import torch

from ddpm.diffusion.processes import process_name
from ddpm.errors import ConfigError


def check_steps_left(module, checkpoint: dict) -> None:
    """A ConfigError when a fit resumes from a checkpoint at or past ``trainer.max_steps`` (called from a
    LightningModule's ``on_load_checkpoint``; nothing to check when loaded outside a Trainer)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # loaded outside a Trainer (load_run, load_autoencoder)
        return
    step = checkpoint["global_step"]
    if trainer.training and 0 <= trainer.max_steps <= step:
        raise ConfigError(f"ckpt_path= holds step {step} but trainer.max_steps={trainer.max_steps}: "
                          f"nothing is left to train; set trainer.max_steps above {step}")


def refusal(error: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words (torch's message is a page)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found or "Weights only load failed" in str(error):
        what = found[1] if found else "an object"
        return f"it holds {what}, not only tensors and plain containers; nothing in it was run"
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def _size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return None


def _starts_like_a_zip(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except (OSError, TypeError):
        return False


def _cut_short(path) -> bool:
    """Whether ``path`` starts like a torch (zip) checkpoint but is not a whole zip: a save cut short."""
    if not _starts_like_a_zip(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (OSError, TypeError, zipfile.BadZipFile, EOFError, ValueError):
        return True


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint at ``path`` (a dict with a ``state_dict``), read with ``weights_only=True``.

    A file that is not a torch file, holds anything but tensors and plain containers, or has no
    ``state_dict`` is a ConfigError of one line naming it and the reason.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than tensors and plain containers
        why = refusal(e)
        if _size(path) == 0:
            why = "it is empty"
        elif _cut_short(path):
            why = "it is truncated or damaged: a save cut short?"
        elif not why.startswith("it holds") and not _starts_like_a_zip(path):
            why = f"it is not a file written by torch.save; {why}"
        raise ConfigError(f"ckpt_path='{path}' cannot be read as a checkpoint ({why})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path='{path}' cannot be read as a checkpoint: it holds no state_dict")
    return checkpoint


def current_name(key: str) -> str:
    """A state-dict key as today's module names it: a text encoder was ``text.`` before the conditioning
    object held it, a latent model's ``scale_factor`` and ``autoencoder_digest`` were the module's own
    before the codec held them."""
    if key.startswith("text."):
        return "conditioning." + key[5:]
    return "codec." + key if key in ("scale_factor", "autoencoder_digest") else key


def _name(key: str) -> str:
    return current_name(key.replace("._orig_mod", ""))  # torch.compile's wrapper, absent from an eager module's names


def check_fits(module: torch.nn.Module, path: str | os.PathLike, state_dict: dict | None = None,
               same_schedule: bool = False, process: str | None = None) -> None:
    """A ConfigError of one line when the checkpoint at ``path`` (its ``state_dict``, when already read)
    does not hold ``module``'s parameters and buffers with its shapes (a checkpoint of another model);
    names the first that differs. ``same_schedule`` (a resume): the schedule's buffers must also hold
    the same values, since the checkpoint's would silently replace the ones the options give.

    A diffusion module's process (``module.process``: vp, edm, flow) must be the one the checkpoint was trained on
    (its ``process`` entry, given as ``process`` with ``state_dict``; checkpoints from before the entry are vp).

    The file is memory-mapped, so only its index is read here, not its tensors' data.
    """
    if state_dict is None:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an old non-zip file cannot be mapped
            checkpoint = read_checkpoint(path)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise ConfigError(f"ckpt_path='{path}' cannot be read as a checkpoint: it holds no state_dict")
        state_dict, process = checkpoint["state_dict"], checkpoint.get("process")
    if getattr(module, "process", None) is not None:
        saved, wanted_process = process or "vp", process_name(module.process)
        if saved != wanted_process:
            raise ConfigError(f"ckpt_path='{path}' was trained with process={saved}, but this run is process="
                              f"{wanted_process}: a model cannot change its process; use process={saved} (its own run "
                              "config), or train a new run")
    state_dict = {_name(k): v for k, v in state_dict.items()}
    saved = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    wanted = {_name(k): tuple(v.shape) for k, v in module.state_dict().items()}
    hint = "a checkpoint of another model: use the model options it was trained with"
    for key, shape in wanted.items():
        if key not in saved:
            raise ConfigError(f"ckpt_path='{path}' does not fit this model: it has no {key} {list(shape)} ({hint})")
        if saved[key] != shape:
            raise ConfigError(f"ckpt_path='{path}' does not fit this model: {key} has shape {list(saved[key])} "
                              f"in the checkpoint but {list(shape)} in the model ({hint})")
    extra = sorted(set(saved) - set(wanted))
    if extra:
        raise ConfigError(f"ckpt_path='{path}' does not fit this model: the checkpoint has {len(extra)} tensors "
                          f"the model lacks, e.g. {extra[0]} ({hint})")
    schedule = {k: v for k, v in module.state_dict().items() if k.startswith("schedule.") and same_schedule}
    for key, value in schedule.items():  # same shapes, checked above; the values too: they win on load
        if not torch.equal(state_dict[key].to(value.dtype), value.cpu()):
            raise ConfigError(
                f"ckpt_path='{path}' was trained with another noise schedule ({key} differs from the one "
                "the schedule options give): a run's schedule cannot change on resume; resume with its own "
                "schedule options")
