"""``evaluate.py devices=N`` (and ``num_nodes``): the Lightning Fabric DDP job that samples a checkpoint
over several processes, and each process's ``Shard`` of it (``ddpm.runs.evaluate`` samples and scores)."""

from __future__ import annotations

import os
import warnings

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig

from ddpm.errors import ConfigError
from ddpm.evaluation.reference import Shard
from ddpm.training.logs.console import quiet_lightning


def check_devices(cfg: DictConfig) -> str | None:
    """The accelerator (``cpu`` or ``cuda``) of a ``devices``/``num_nodes`` job, None for one process, or
    a ConfigError: scoring samples_path, a device index, more GPUs than this node has, several nodes
    outside a SLURM / torchrun job."""
    devices, nodes = cfg.get("devices", 1), cfg.get("num_nodes", 1)
    if devices == 1 and nodes == 1:
        return None
    if cfg.samples_path:
        raise ConfigError(f"devices={devices}, num_nodes={nodes} share out sampling a checkpoint; "
                          "samples_path is scored by one process: leave devices=1 num_nodes=1")
    device = str(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} with devices={devices}: use device=cuda (each process takes "
                          "its own GPU) or device=cpu")
    if device == "cuda" and devices > torch.cuda.device_count():
        raise ConfigError(f"devices={devices} is not allowed here: this node has {torch.cuda.device_count()} "
                          "GPUs (use at most that many, or device=cpu)")
    if nodes > 1 and not (SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
                          or "MASTER_ADDR" in os.environ):
        raise ConfigError(f"num_nodes={nodes} needs the processes of a cluster job: run evaluate.py under srun "
                          "(SLURM) or torchrun on every node, or leave num_nodes=1")
    return device


def launch(cfg: DictConfig) -> L.Fabric | None:
    """The Lightning Fabric DDP job of ``devices`` processes per node on ``num_nodes`` nodes, launched
    (this script re-run per process, or the processes of torchrun / a SLURM job); None for one process.
    Its accelerator is ``device``'s type (null: cuda if available, else cpu: gloo)."""
    device = check_devices(cfg)
    if device is None:
        return None
    quiet_lightning(cfg.num_nodes)  # the srun hint on one node
    # Fabric's all_gather goes through torch.distributed.nn (for autograd), which torch now calls deprecated
    warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                            module=r"lightning\.fabric\.utilities\.distributed")
    fabric = L.Fabric(accelerator="gpu" if device == "cuda" else "cpu", strategy="ddp", devices=cfg.devices,
                      num_nodes=cfg.num_nodes)
    fabric.launch()
    return fabric


def fabric_shard(fabric: L.Fabric | None) -> Shard:
    """This process's ``Shard`` of the Fabric job (one process: rank 0 of 1); ``gather_rows`` gives
    every rank's rows in rank order (all_gather needs one shape: padded to the longest, then cut)."""
    if fabric is None:
        return Shard()

    def gather_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
        padded = t.new_zeros(max(max(counts), 1), *t.shape[1:])
        padded[: len(t)] = t
        gathered = fabric.all_gather(padded.to(fabric.device))  # (world, max, ...)
        return torch.cat([gathered[r, :c] for r, c in enumerate(counts)]).cpu()

    return Shard(fabric.global_rank, fabric.world_size, lambda t: fabric.all_reduce(t, reduce_op="sum"), gather_rows)
