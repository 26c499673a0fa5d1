"""``hydra/launcher=slurm``: every job checked before hydra-submitit-launcher submits any.

The launcher itself is ``hydra_plugins.ddpm_launcher.slurm.SlurmLauncher`` (Hydra takes launchers
only from the ``hydra_plugins`` package): the plugin's SLURM launcher, calling ``check_jobs`` first.

A job that cannot work on the cluster should fail here, in one line, not after hours in the queue:
each sweep point's config goes through the same checks as ``train.py`` (``validate_train_config``)
and through the rules that tie the SLURM allocation to Lightning's DDP settings (``check_allocation``):
one task per device (a mismatch hangs DDP at start, Lightning #8707), a GPU per task, as many nodes
as ``trainer.num_nodes``, and one owner of requeue (Lightning, on USR1; submitit's requeue stays off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from ddpm.errors import ConfigError, exit_with
from ddpm.runs.validate import validate_train_config

GPU_ACCELERATORS = ("gpu", "cuda")


def check_allocation(trainer: DictConfig, launcher: dict[str, Any]) -> None:
    """A ConfigError of one line when the SLURM request ``launcher`` (hydra.launcher's fields, resolved)
    cannot run ``trainer`` (the Lightning Trainer's config) as one DDP job."""
    devices, num_nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    accelerator = str(trainer.get("accelerator"))
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(f"trainer.devices={devices!r} cannot be submitted: a SLURM job needs the number of "
                          "devices per node (e.g. trainer.devices=8), which sets its tasks per node")
    tasks = launcher.get("tasks_per_node")
    if tasks != devices:
        raise ConfigError(f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: SLURM must start one "
                          "task per device (leave tasks_per_node out: it follows trainer.devices)")
    gpus = launcher.get("gpus_per_node")
    if accelerator in GPU_ACCELERATORS and gpus != devices:
        raise ConfigError(f"hydra.launcher.gpus_per_node={gpus} but trainer.devices={devices} with "
                          f"trainer.accelerator={accelerator}: each task needs its own GPU (leave gpus_per_node out: "
                          "it follows trainer.devices)")
    if accelerator == "cpu" and gpus not in (None, 0):
        raise ConfigError(f"hydra.launcher.gpus_per_node={gpus} for a CPU job (trainer.accelerator=cpu): "
                          "set hydra.launcher.gpus_per_node=null, or train on the GPUs")
    nodes = launcher.get("nodes")
    if nodes != num_nodes:
        raise ConfigError(f"hydra.launcher.nodes={nodes} but trainer.num_nodes={num_nodes}: Lightning must know every "
                          "node of the job (leave nodes out: it follows trainer.num_nodes)")
    if launcher.get("max_num_timeout"):
        raise ConfigError(f"hydra.launcher.max_num_timeout={launcher['max_num_timeout']}: Lightning's SLURMEnvironment "
                          "requeues the job (on USR1); submitit must not as well, keep it 0")
    signal = str((launcher.get("additional_parameters") or {}).get("signal", ""))
    if not signal.startswith("USR1@"):
        raise ConfigError(f"hydra.launcher.additional_parameters.signal={signal!r}: Lightning saves and requeues on "
                          "USR1, use USR1@<seconds before the time limit> (hydra.launcher.signal_delay_s)")
    delay = launcher.get("signal_delay_s")
    if not isinstance(delay, int) or isinstance(delay, bool) or delay < 1:
        raise ConfigError(f"hydra.launcher.signal_delay_s={delay!r} is not allowed: use the seconds a step and a "
                          "checkpoint take at most, e.g. 120")


def check_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
    """Check every job ``launcher`` (a hydra-submitit-launcher ``SlurmLauncher``) is about to submit;
    one bad job stops the whole submission (exit 2, one line on stderr naming the job and the value),
    so a sweep is all or nothing."""
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        job = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        try:
            validate_train_config(job)
            # the fields as submitted: resolved once, from the sweep's composition without the sweep's
            # values (launcher.params), so a sweep over trainer.devices is found out too
            check_allocation(job.trainer, launcher.params)
        except ConfigError as error:
            where = f"job #{idx} ({' '.join(overrides)}): " if len(job_overrides) > 1 else ""
            exit_with(f"{where}{error} (nothing was submitted)")
