"""One error type for bad user input, reported by the entry points as a single line."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from pathlib import Path


class ConfigError(ValueError):
    """A configuration or input value outside what is allowed; the message names both."""


def check_choice(name: str, value, allowed: tuple):
    """``value`` if it is one of ``allowed`` (booleans never stand in for 0/1), else a ConfigError naming both."""
    if value not in allowed or (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r} is not allowed: use one of {', '.join(map(repr, allowed))}")
    return value


def root_config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError behind ``exc`` (Hydra wraps errors raised while instantiating), if any."""
    while exc is not None:
        if isinstance(exc, ConfigError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def unwrapped_config_errors():
    """Inside it, an error with a ConfigError behind it (Hydra wraps what a constructor raised while
    instantiating) is raised as that ConfigError, the user's one line; any other error as it is."""
    try:
        yield
    except Exception as e:
        raise root_config_error(e) or e


# torch re-raises an exception of a DataLoader worker as the same type, its message the worker's
# whole traceback: "Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\n
# ddpm.data.images.DataError: cannot decode image ..."
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback")
_RAISED = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: ")


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line: for an error re-raised from a DataLoader worker, the
    original message without the worker's traceback; any other line breaks become spaces."""
    text = str(error)
    if _WORKER.match(text):
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = _RAISED.sub("", last.strip(), count=1)
    return " ".join(text.split())


def exit_with(error: BaseException | str, code: int = 2):
    """Print ``error: <one line>`` on stderr and exit with ``code`` (2: bad usage, as argparse)."""
    message = error if isinstance(error, str) else one_line(error)
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def report_config_errors(fn):
    """Run ``fn``; a ConfigError anywhere in the cause chain exits 2 with one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = root_config_error(exc)
            if error is None:
                raise
            exit_with(error)

    return wrapper


def unwritable(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` cannot be created or written to, or None when it can. Creates nothing
    (a temp file in it, or in its nearest existing ancestor, is made and removed)."""
    path = Path(directory).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"'{existing}' is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"'{existing}' is not writable ({e.strerror or type(e).__name__})"
    return None


def run_dir_check():
    """A Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``, ``conf/evaluate.yaml``): before
    Hydra creates ``hydra.run.dir``, a directory that cannot be created or written is one line on
    stderr and exit 2; Hydra's own failure there is a traceback. Hydra is imported here only."""
    from hydra.experimental.callback import Callback

    class RunDirCheck(Callback):
        def on_run_start(self, config, **kwargs) -> None:
            directory = config.hydra.run.dir
            why = unwritable(directory)
            if why is not None:
                exit_with(f"hydra.run.dir='{directory}' cannot be used: {why}; give a writable one, "
                          "e.g. hydra.run.dir=$HOME/outputs/run")

    return RunDirCheck()
