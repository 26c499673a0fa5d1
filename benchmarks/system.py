"""What the throughput benchmark times: one implementation's network, training step and sampling loop."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


def eager_twin(net: nn.Module) -> nn.Module:
    """An fp32 NCHW copy of ``net`` on the CPU, taken before it is compiled: the reference of the checks.

    Kept on the CPU so it adds nothing to the device memory measured while training.
    """
    return copy.deepcopy(net).to("cpu", memory_format=torch.contiguous_format).float()


@dataclass
class System:
    """One implementation: its network, a training step and a sampling loop, for one mode."""

    name: str
    net: nn.Module
    eager: nn.Module  # eager_twin(net): never compiled, never trained; reference() copies it with net's weights
    train_step: callable  # (x0) -> None
    sample: callable  # (x_T, steps) -> images
    forward: callable  # (net, x, t) -> eps prediction (for the check and the FLOP count)
    channels_last: bool = False
    notes: str = ""
    fast: nn.Module | None = None  # what the timed code calls, when it is not ``net`` (a torch.compile wrapper)

    def reference(self) -> nn.Module:
        """``net``'s current weights in a device copy of the uncompiled fp32 NCHW twin.

        Compiling keeps the parameter names, so ``net``'s state dict loads into the twin as it is.
        """
        reference = copy.deepcopy(self.eager).to(next(self.net.parameters()).device)
        reference.load_state_dict(self.net.state_dict())
        return reference
