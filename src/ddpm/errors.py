"""One error type for bad user input, reported by the entry points as a single line."""

from __future__ import annotations

import functools
import sys


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


def report_config_errors(fn):
    """Run ``fn``; a ConfigError anywhere in the cause chain exits with one line on stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = root_config_error(exc)
            if error is None:
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
