"""A resumed run trains with the optimizer settings of its config, not the checkpoint's.

Lightning restores the optimizer's and the LR scheduler's state from the checkpoint, so an
``optimizer.lr=...`` (or weight decay, betas, eps, momentum) given on resuming would be silently
overwritten: the settings as configured are recorded when the optimizer is made and applied again
once the checkpoint has been restored, one line each where they differ.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info

SETTINGS = ("lr", "betas", "eps", "weight_decay", "momentum")


def configured_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimizer's settings per parameter group, as configured (before any checkpoint is restored)."""
    return [{k: v for k, v in group.items() if k in SETTINGS} for group in optimizer.param_groups]


def reapply_settings(scheduler: torch.optim.lr_scheduler.LambdaLR, configured: list[dict]) -> None:
    """Set ``configured`` on the (restored) optimizer of ``scheduler``; a new learning rate becomes the scheduler's
    base rate, the current one its factor at the restored step times it."""
    for group, settings in zip(scheduler.optimizer.param_groups, configured, strict=True):
        changed = {k: v for k, v in settings.items() if k != "lr" and k in group and group[k] != v}
        for key, value in changed.items():
            rank_zero_info(f"optimizer.{key}={value} (the checkpoint has {group[key]}): training continues with it")
            group[key] = value
    lrs = [settings["lr"] for settings in configured]
    if list(scheduler.base_lrs) == lrs:
        return
    rank_zero_info(f"optimizer.lr={lrs} (the checkpoint has {scheduler.base_lrs}): training continues with it")
    scheduler.base_lrs = list(lrs)
    for group, lr, factor in zip(scheduler.optimizer.param_groups, lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = lr, lr * factor(scheduler.last_epoch)
