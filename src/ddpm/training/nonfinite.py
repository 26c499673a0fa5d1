"""Skip optimizer updates whose loss or gradient is not finite, count them, stop after too many in a row."""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm.errors import ConfigError


class NonFiniteError(ConfigError):
    """Training stopped: too many consecutive steps had a non-finite loss or gradient."""


class NonFiniteGuard:
    """A device-side finite flag per optimizer step that guards the update and the EMA.

    ``check`` runs after backward, before the optimizer updates. The flag never leaves the device
    for a fused optimizer (the default Adam): it is handed to the optimizer as ``found_inf``, which
    leaves parameters, moments and step counter untouched, as torch's GradScaler does. Otherwise the
    gradients are dropped (an optimizer skips parameters without one), which reads the flag on the
    host: free on a CPU, one sync per step on an accelerator. The counters stay on the device and are
    read at logging steps only (:meth:`stop_if_too_many`).
    """

    def __init__(self, max_consecutive: int):
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ConfigError(f"max_nonfinite_steps={max_consecutive!r} is not allowed: use an integer >= 1, e.g. 20")
        self.max_consecutive = max_consecutive
        self.total: Tensor | int = 0  # non-finite steps so far (restored from checkpoints)
        self.consecutive: Tensor | int = 0  # non-finite steps in a row, up to now

    def check(self, loss: Tensor | None, grads: list[Tensor], optimizer: torch.optim.Optimizer, scaled: bool) -> tuple[Tensor, Tensor]:
        """(finite flag (), gradient norm ()) of this step; makes ``optimizer`` skip it when not finite.

        ``loss``: None under DDP, where each rank's loss differs but the all-reduced gradients do not,
        so the ranks decide alike (a non-finite loss makes the gradients non-finite anyway).
        ``scaled``: a GradScaler (16-mixed) already skips steps with inf/NaN gradients; only count them.
        """
        norm = torch.nn.utils.get_total_norm(grads)
        finite = torch.isfinite(norm) if loss is None else torch.isfinite(loss.detach()) & torch.isfinite(norm)
        self.total = self.total + (~finite).long()
        self.consecutive = (self.consecutive + 1) * (~finite).long()
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        if scaled:
            pass
        elif optimizer.defaults.get("fused"):
            optimizer.found_inf = (~finite).float()  # read by fused Adam/AdamW/SGD inside step()
        elif not bool(finite):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        return finite, norm

    def stop_if_too_many(self, step: int) -> None:
        """A NonFiniteError naming ``step`` once ``max_consecutive`` steps in a row were not finite (reads the host)."""
        consecutive = int(self.consecutive)
        if consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"training stopped at step {step}: the last {consecutive} steps had a non-finite loss or gradient "
                f"(module.max_nonfinite_steps={self.max_consecutive}); their updates were skipped, so weights, EMA "
                "and checkpoints are those of the last finite step: lower optimizer.lr or check the data"
            )

    def state_dict(self) -> dict[str, int]:
        return {"total": int(self.total), "consecutive": int(self.consecutive)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.consecutive = state["total"], state["consecutive"]
