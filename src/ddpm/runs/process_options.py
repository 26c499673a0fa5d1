"""Options of the VP chain typed for another process, caught on the command line with one line.

``process=edm`` and ``process=flow`` compose no beta schedule and a continuous-time denoiser and loss, so an override
of a VP-only key (``denoiser.variance=learned_range``, ``loss.min_snr_gamma=5``, ``schedule.num_timesteps=100``)
names a key their config does not have; Hydra would stop with its own several-line message. ``check_overrides``
runs on ``sys.argv`` before Hydra composes and says it in one line. The process is the command line's ``process=``,
else the one the command line's ``experiment=`` file picks, else vp (train.yaml's).
"""

from __future__ import annotations

import re
from pathlib import Path

from ddpm.errors import ConfigError

CONF = Path(__file__).resolve().parents[3] / "conf"
# keys of the VP chain's groups that the continuous processes' configs do not have
VP_ONLY = ("denoiser.prediction_type", "denoiser.variance", "loss.min_snr_gamma",
           "loss.lambda_vlb", "loss.importance_sampling", "loss.history")
OTHER_PROCESSES = ("edm", "flow")


def chosen_process(args: list[str], conf: Path = CONF) -> str:
    """The process the overrides ``args`` choose: ``process=X``, else ``experiment=E``'s ``override /process: X``."""
    choice = {}
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in ("process", "experiment"):
            choice[key] = value
    if "process" in choice:
        return choice["process"]
    experiment = conf / "experiment" / f"{choice.get('experiment', '')}.yaml"
    if "experiment" in choice and experiment.is_file():
        found = re.search(r"^\s*-\s*override\s+/process\s*:\s*(\w+)", experiment.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return "vp"


def check_overrides(args: list[str], conf: Path = CONF) -> None:
    """A ConfigError of one line for an override of a VP-only key when the process is edm or flow."""
    process = chosen_process(args, conf)
    if process not in OTHER_PROCESSES:
        return
    for arg in args:
        key = arg.lstrip("+~").partition("=")[0]
        if key == "schedule" or key.startswith("schedule."):
            raise ConfigError(f"{arg} is an option of the VP chain (process=vp); process={process} has no beta schedule: "
                              f"its noise levels are the process's own (conf/process/{process}.yaml)")
        if key in VP_ONLY:
            group, _, name = key.partition(".")
            raise ConfigError(f"{arg} is an option of the VP chain (process=vp); process={process}'s {group} has no "
                              f"{name}: its prediction and loss are the process's own (denoiser=edm|velocity, "
                              "loss=edm|flow_matching)")
