"""``python train.py resume=RUN_DIR``: continue a run in place, composed as it was first composed.

Hydra records a run's command-line overrides in ``RUN_DIR/.hydra/overrides.yaml``. Before Hydra
parses the command line, ``resume_argv`` puts them back, followed by what is given now (a key given
again wins), and adds the run directory (``hydra.run.dir``, or ``hydra.sweep.dir`` + ``subdir`` for a
``-m`` submission) and ``ckpt_path=auto``: the run continues from its newest complete checkpoint, in
its own directory, with its W&B run id (``RUN_DIR/wandb_id``).

    python train.py resume=outputs/train/2026-11-25_10-00-00                      # here, as it was
    python train.py resume=outputs/train/2026-11-25_10-00-00 trainer.max_steps=2e5  # and train longer
    python train.py -m hydra/launcher=slurm resume=multirun/train/2026-11-25_10-00-00/0  # on SLURM
"""

from __future__ import annotations

import re
from pathlib import Path

from ddpm.errors import ConfigError, exit_with
from ddpm.runs.legacy import moved_override, upgrade_overrides
from ddpm.runs.process_options import check_overrides

_RESUME = re.compile(r"^\+{0,2}resume=(.*)$", re.DOTALL)
# keys that resume= sets itself: a saved value of them is dropped
_SET_HERE = {"resume", "ckpt_path", "paths.output_dir"}


def override_key(override: str) -> str:
    """The config key or group an override sets: ``+model.dropout=0.1`` -> ``model.dropout``,
    ``model@module.net=x`` -> ``model``, ``~callbacks.fid`` -> ``callbacks.fid``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def saved_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides ``run_dir`` was started with, or a ConfigError when ``run_dir`` is not
    a directory that ``train.py`` made."""
    import yaml

    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is a file"
        raise ConfigError(f"resume={run_dir} {what}: give the run directory of a training "
                          "(outputs/train/<time>, or multirun/train/<time>/<job number>)")
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / "config.yaml").is_file() or not overrides.is_file():
        raise ConfigError(f"resume={run_dir} is not a run directory of train.py: it has no config.yaml and "
                          ".hydra/overrides.yaml (give outputs/train/<time>, or multirun/train/<time>/<job number>)")
    saved = yaml.safe_load(overrides.read_text()) or []
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise ConfigError(f"resume={run_dir}: {overrides} is not a list of overrides")
    return upgrade_overrides(saved)  # options renamed since the run started


def expand_resume(args: list[str]) -> list[str]:
    """``args`` (the command line after the script) with ``resume=RUN_DIR`` expanded (see the module
    docstring); unchanged without it. A ConfigError names a bad ``RUN_DIR``."""
    given = [a for a in args if _RESUME.match(a)]
    if not given:
        return args
    if len(given) > 1:
        raise ConfigError(f"resume= is given {len(given)} times ({', '.join(given)}): continue one run at a time")
    value = _RESUME.match(given[0])[1].strip().strip("'\"")
    if not value or value == "null":
        return [a for a in args if a is not given[0]]
    run_dir = Path(value).expanduser().absolute()
    saved = saved_overrides(run_dir)
    now = [a for a in args if a is not given[0]]
    now_keys = {override_key(a) for a in now if "=" in a and not a.startswith("-")}
    kept = [o for o in saved if override_key(o) not in now_keys | _SET_HERE]
    if "-m" in now or "--multirun" in now:  # a submission: the job's directory is sweep.dir/subdir
        where = [f"hydra.sweep.dir={run_dir.parent}", f"hydra.sweep.subdir={run_dir.name}"]
    else:
        where = [f"hydra.run.dir={run_dir}"]
    where = [w for w in where if override_key(w) not in now_keys]
    auto = [] if "ckpt_path" in now_keys else ["ckpt_path=auto"]
    return [*kept, *now, *where, *auto, f"resume={run_dir}"]


def resume_argv(argv: list[str]) -> list[str]:
    """``sys.argv`` with ``resume=`` expanded; a bad run directory, or an option of an older layout typed on the
    command line (``text_encoder=small``: ``conditioning=text_small``), exits 2 with one line on stderr."""
    try:
        for arg in argv[1:]:
            if moved_override(arg) != arg:
                raise ConfigError(f"{arg} is an option of an older config layout: use {moved_override(arg)}")
        args = expand_resume(argv[1:])
        check_overrides(args)  # denoiser.variance=... on process=edm: one line, before Hydra's several
        return [argv[0], *args]
    except ConfigError as error:
        exit_with(error)
