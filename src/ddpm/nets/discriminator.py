"""The patch discriminator of the autoencoder's adversarial loss: pix2pix's ``NLayerDiscriminator``.

Isola et al. 2017 (PatchGAN, Sec. 3.2.2), as VQGAN and latent diffusion use it (Esser et al. 2021;
Rombach et al. 2022, App. G): strided 4x4 convolutions, BatchNorm and LeakyReLU(0.2), one logit per
overlapping patch. Weights drawn from N(0, 0.02) (BatchNorm scales from N(1, 0.02)), as there.
"""

from __future__ import annotations

from torch import Tensor, nn

from ddpm.errors import ConfigError


class PatchDiscriminator(nn.Module):
    """Logits (B, 1, h, w), one per patch, of images (B, C, H, W) in [-1, 1].

    Args:
        in_channels: image channels C.
        channels: width of the first convolution; doubled per layer up to 8x.
        num_layers: strided (halving) convolutions; the receptive field grows with each
            (3 as in pix2pix for 256x256; 2 suits 28x28, 1 the 8x8 digits).
    """

    def __init__(self, in_channels: int, channels: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1 or channels < 1:
            raise ConfigError(f"discriminator num_layers={num_layers!r}, channels={channels!r}: use 1 or more of each")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers + 1):  # num_layers - 1 more halvings, then one stride-1 layer
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))  # (B, 1, h, w) patch logits
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)
