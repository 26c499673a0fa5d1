"""What a run's ``config.yaml`` may instantiate: constructors of this package, torch, torchvision and lightning.

A run directory can come from anyone, and ``instantiate`` calls whatever a ``_target_`` names, so
every target of the whole config is checked before the first one is built. A target is allowed when
its dotted name starts with an allowed package, has no private part (``_x``, ``__x__``), resolves to
a class or function defined in an allowed package (so ``ddpm.runs.load.os.system`` is refused), and
is not one of the loaders and code runners those packages hold (``torch.load``, ``torch.hub``,
``torch.utils.cpp_extension``, ``lightning.pytorch.cli``, ...).
"""

from __future__ import annotations

import inspect

from hydra._internal.utils import _locate  # hydra.utils.get_object, without its error log
from omegaconf import DictConfig, ListConfig, OmegaConf

from ddpm.errors import ConfigError

ALLOWED_PACKAGES = ("ddpm", "torch", "torchvision", "lightning")
# modules inside the allowed packages that read pickles, fetch or compile code, or import by name
DENIED_MODULES = (
    "torch.serialization", "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension",
    "torch.utils.model_zoo", "torch.multiprocessing", "torch.distributed", "torch.library", "torch._ops",
    "torch._classes", "torchvision.io", "lightning.pytorch.cli", "lightning.pytorch.core.saving",
    "lightning.fabric.utilities.cloud_io", "ddpm.runs",
)
DENIED_NAMES = ("load_from_checkpoint",)  # LightningModule.load_from_checkpoint: a loader reached as an attribute


def _in(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def target_refusal(target) -> str | None:
    """Why ``target`` (a ``_target_`` value) may not be instantiated, or None when it may."""
    if not isinstance(target, str):
        return "not a dotted name"
    parts = target.split(".")
    if not _in(target, ALLOWED_PACKAGES):
        return f"outside the allowed packages {', '.join(p + '.' for p in ALLOWED_PACKAGES)}"
    if any(not p.isidentifier() or p.startswith("_") for p in parts) or DENIED_NAMES[0] in parts:
        return "a private or loading attribute"
    if _in(target, DENIED_MODULES):
        return "a loader or code runner"
    try:
        obj = _locate(target)  # imports modules of the allowed packages only: the first part was checked
    except Exception:
        return "no such class or function"
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return "not a class or function"
    home = getattr(getattr(obj, "__func__", obj), "__module__", None) or ""
    if not _in(home, ALLOWED_PACKAGES):
        return f"defined in {home or 'an unknown module'}, outside the allowed packages"
    if _in(home, DENIED_MODULES):
        return "a loader or code runner"
    return None


def _walk(node, path: str):
    """(key path, ``_target_`` value) of every target in a plain container, depth first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield (f"{path}._target_" if path else "_target_"), node["_target_"]
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def checked_config(cfg: DictConfig | ListConfig, source: str) -> DictConfig | ListConfig:
    """``cfg`` with its interpolations resolved, after checking every ``_target_`` in it.

    What is checked is what gets instantiated: the returned config holds no interpolation that
    could resolve to another target later. A forbidden target, or one that cannot be resolved, is
    a ConfigError naming ``source``, the key path and the target.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise ConfigError(f"{source}: cannot resolve its interpolations ({type(e).__name__}: {e})") from e
    for path, target in _walk(plain, ""):
        reason = target_refusal(target)
        if reason is not None:
            raise ConfigError(f"{source}: {path}={target!r} is not allowed ({reason}); "
                              f"a run config may only instantiate classes and functions of "
                              f"{', '.join(ALLOWED_PACKAGES)}")
    return OmegaConf.create(plain)
