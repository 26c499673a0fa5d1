"""Forward FLOPs of a network (ddpm.training.perf.forward_flops), counted two per multiply-add."""

import pytest
from torch import nn

from ddpm.nets.unet import UNet
from ddpm.training.perf import forward_flops


def test_forward_flops_of_one_convolution_is_two_per_multiply_add():
    class OneConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    assert forward_flops(OneConv(), (3, 8, 8)) == 2 * 3 * 5 * 3 * 3 * 8 * 8


def test_forward_flops_of_the_cifar10_unet_is_12_4_gflop():
    net = UNet(32, 3, 128, (1, 2, 2, 2), 2, (16,), 0.1)  # the figure for the DDPM CIFAR-10 U-Net
    assert forward_flops(net, (3, 32, 32)) / 1e9 == pytest.approx(12.4, abs=0.05)
