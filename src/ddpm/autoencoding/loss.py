"""The autoencoder's objective: reconstruction + KL + an optional perceptual term and patch GAN.

The latent-diffusion first stage (Rombach et al. 2022, App. G; code: ``LPIPSWithDiscriminator``):
    L = sum_pixels |x - x_hat|  (or squared)  + w_p * LPIPS(x, x_hat) * H * W
        + w_kl * KL(q(z|x) || N(0, I))        + lambda * w_d * L_G  (after ``disc_start`` steps)
per sample, averaged over the batch: sums over pixels and latents as in LDM, so ``kl_weight`` 1e-6 means
what it means there. L_G = -mean D(x_hat) (hinge generator loss) and lambda is the adaptive weight of
Esser et al. 2021 (VQGAN), Eq. 7. The discriminator's loss is the hinge loss
0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.errors import ConfigError

RECONSTRUCTION_LOSSES = ("l1", "l2")


def check_autoencoder_loss_options(reconstruction: str, kl_weight: float, disc_start: int, disc_weight: float,
                                   perceptual_weight: float) -> None:
    """One-line ConfigErrors for the module's loss options."""
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ConfigError(f"module.reconstruction={reconstruction!r} is not allowed: use one of {list(RECONSTRUCTION_LOSSES)}")
    for name, value in (("kl_weight", kl_weight), ("disc_weight", disc_weight), ("perceptual_weight", perceptual_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"module.{name}={value!r} is not allowed: use a number >= 0 (LDM's kl_weight: 1e-6)")
    if isinstance(disc_start, bool) or not isinstance(disc_start, int) or disc_start < 0:
        raise ConfigError(f"module.disc_start={disc_start!r} is not allowed: use the step the discriminator starts "
                          "at, 0 or more")


def reconstruction_loss(x: Tensor, x_hat: Tensor, kind: str = "l1") -> Tensor:
    """Per-sample reconstruction loss (B,): |x - x_hat| (l1) or (x - x_hat)^2 (l2) summed over C, H, W."""
    diff = (x_hat - x).abs() if kind == "l1" else (x_hat - x).square()  # (B, C, H, W)
    return diff.flatten(1).sum(1)


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, delta: float = 1e-4) -> Tensor:
    """lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + delta), clamped to [0, 1e4] and detached
    (Esser et al. 2021, Eq. 7; G_L is the decoder's last layer). Both losses are scalars."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + delta)).clamp(0.0, 1e4).detach()


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class Perceptual:
    """LPIPS (Zhang et al. 2018) with VGG-16 features read from a local file only, frozen; not a submodule
    of the LightningModule, so it stays out of checkpoints.

    ``path``: torchvision's ``vgg16`` state dict (``vgg16-397923af.pth``) or a whole ``lpips.LPIPS``
    state dict. The linear heads come with the ``lpips`` package; nothing is downloaded.
    """

    def __init__(self, path: str | None):
        file = Path(str(path)).expanduser() if path else None
        if file is None or not file.is_file():
            raise ConfigError(f"module.perceptual_path={path!r} is not a file: the perceptual loss needs local VGG-16 "
                              "weights (torchvision's vgg16-397923af.pth); or set module.perceptual_weight=0")
        try:
            import lpips  # the package ships its linear heads; pnet_rand: no VGG download
        except ImportError as e:
            raise ConfigError("module.perceptual_weight > 0 needs the lpips package: pip install lpips==0.1.4") from e
        with warnings.catch_warnings():  # torchvision's deprecation of lpips' ``pretrained=False`` call
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(file, map_location="cpu", weights_only=True)
        if any(k.startswith("features.") for k in state):  # torchvision's VGG-16: features.i.* -> sliceK.i.*
            slices = {name: k for k in range(1, 6) for name, _ in getattr(net.net, f"slice{k}").named_children()}
            state = {f"net.slice{slices[k.split('.')[1]]}.{k.partition('.')[2]}": v for k, v in state.items()
                     if k.startswith("features.") and k.split(".")[1] in slices}
            missing = net.load_state_dict(state, strict=False).missing_keys
            if any(k.startswith("net.") for k in missing):
                raise ConfigError(f"module.perceptual_path={path!r} does not hold VGG-16 weights (missing {missing[0]})")
        else:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise ConfigError(f"module.perceptual_path={path!r} holds neither torchvision's VGG-16 nor an LPIPS "
                                  "state dict") from e
        self.net = net.eval().requires_grad_(False)

    def __call__(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Per-sample LPIPS distance (B,) of images (B, C, H, W) in [-1, 1]; grey images are repeated to RGB."""
        self.net.to(x.device)
        if x.shape[1] == 1:
            x, x_hat = x.repeat(1, 3, 1, 1), x_hat.repeat(1, 3, 1, 1)
        return self.net(x_hat, x).flatten(1).sum(1)

