"""A U-Net that turns non-finite after a number of training calls, for tests/unit/training/test_nonfinite.py (``model._target_=support.nan_net.NaNAfter``)."""

from ddpm.nets.unet import UNet


class NaNAfter(UNet):
    """``UNet`` whose output is NaN from training call ``nan_after + 1`` on (sampling calls are not counted)."""

    def __init__(self, nan_after: int, **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.nan_after, self.training_calls = nan_after, 0

    def forward(self, x, t):
        out = super().forward(x, t)
        if self.training:
            self.training_calls += 1
            if self.training_calls > self.nan_after:
                return out * float("nan")
        return out
