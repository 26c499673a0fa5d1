"""The EMA of the weights (ddpm.training.ema): the update is torch's AveragedModel with an EMA rule, checked
against it, and makes no host sync on a GPU. Its decay schedule inside the module: test_module.py."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm.training.ema import ema_decay_fn, make_ema


def test_ema_update_equals_torch_averaged_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ours = make_ema(net, decay=0.99)
    theirs = AveragedModel(net, multi_avg_fn=ema_decay_fn(0.99, True), use_buffers=False)
    for _ in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(5, 3))  # moves the BatchNorm running stats (buffers: copied, not averaged)
        ours.update_parameters(net)
        theirs.update_parameters(net)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ema_update_does_not_sync_with_the_gpu():
    net = nn.Linear(64, 64).cuda()
    ema = make_ema(net, 0.999)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ema.update_parameters(net)
    finally:
        torch.cuda.set_sync_debug_mode("default")
