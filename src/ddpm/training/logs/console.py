"""What Lightning prints, sorted for a user: its info lines on stdout, its warnings and errors on stderr,
and the messages nobody running this project can act on silenced at their source."""

from __future__ import annotations

import logging
import sys
import warnings

from lightning.pytorch.utilities.warnings import PossibleUserWarning


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def _warning_or_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record comes (tests swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def info_to_stdout() -> None:
    """Lightning's info lines ("Seed set to 0", "GPU available: ...") go to stdout, its warnings and
    errors stay on stderr, so the stderr of a run stopped by bad input is the one error line."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for console in logger.handlers:
            if type(console) is not logging.StreamHandler or _warning_or_above in console.filters:
                continue  # a file, or split already
            console.addFilter(_warning_or_above)
            out = _Stdout()
            out.setFormatter(console.formatter)
            out.setLevel(console.level)
            out.addFilter(_below_warning)
            logger.addHandler(out)


def quiet_lightning(num_nodes: int = 1) -> None:
    """Silence what Lightning prints on every run that a user of this project cannot act on.

    Each filter matches one message at its source; every other warning still shows.
    """
    # Lightning's advertisements for its cloud logger and model registry (logged, not warned).
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_not_a_tip)
    # torch deprecated LeafSpec; Lightning's _pytree.py still builds one when it wraps the dataloaders.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            r"lightning\.pytorch\.utilities\._pytree")
    # The module logs every log_every_n_steps optimizer steps across epochs, so an epoch shorter
    # than that interval (the digits: 14 batches) loses nothing.
    warnings.filterwarnings("ignore", r"The number of training batches \(\d+\) is smaller than the logging interval",
                            PossibleUserWarning)
    if num_nodes == 1:  # srun is needed to start processes on several nodes; on one, Lightning starts them
        warnings.filterwarnings("ignore", r"The `srun` command is available on your system but is not used",
                                PossibleUserWarning)
