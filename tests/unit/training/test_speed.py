"""The speed switches compute the same function as the plain path: channels-last, bf16 autocast,
torch.compile, fused Adam, and the Lightning loop with bf16 and fused Adam (clipping included)."""

import shutil

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.training.module import DiffusionModule
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.nets.unet import UNet


def small_unet(**kwargs):
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(4,), dropout=0.0, **kwargs)
    with torch.no_grad():  # the zero-initialised output layers would make every comparison 0 == 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def inputs(batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_channels_last_computes_the_same_function():
    net, x, t = small_unet(), *inputs()
    want = net(x, t)
    net.to(memory_format=torch.channels_last)
    got = net(x.contiguous(memory_format=torch.channels_last), t)
    assert rel_err(got, want) < 1e-5


def test_bf16_autocast_stays_within_bf16_rounding():
    net, x, t = small_unet(), *inputs()
    want = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(x, t)
    assert rel_err(got, want) < 3e-2  # bf16 keeps 8 bits of mantissa: ~4e-3 per op


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler")
def test_compiled_network_matches_eager_and_keeps_its_state_dict_names():
    net, x, t = small_unet(), *inputs()
    names = list(net.state_dict())
    want = net(x, t)
    net.compile()
    with torch.no_grad():
        got = net(x, t)
    assert rel_err(got, want) < 1e-4
    assert list(net.state_dict()) == names  # checkpoints load into an eager network and back


def test_module_speed_up_switches_layout_and_keeps_parameter_names():
    module = DiffusionModule(small_unet(), schedules.linear(num_timesteps=10), Denoiser, SimpleLoss(), DDIMSampler(2),
                             lambda p: torch.optim.Adam(p), sample_shape=(3, 8, 8), channels_last=True, compile=None)
    names = list(module.state_dict())
    module.speed_up(channels_last=True)
    convs = [m.weight for m in [*module.net.modules(), *module.ema.modules()] if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert list(module.state_dict()) == names
    images = module.sample(2, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()


def test_fused_adam_takes_the_steps_of_the_adam_formula():
    g = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(64, generator=g))
    grads = [torch.randn(64, generator=g) for _ in range(3)]
    opt = torch.optim.Adam([w], lr=1e-2, fused=True)
    ref, m, v = w.detach().double().clone(), 0.0, 0.0
    for n, grad in enumerate(grads, start=1):  # Kingma & Ba 2015, Algorithm 1, in float64
        w.grad = grad.clone()
        opt.step()
        m = 0.9 * m + 0.1 * grad.double()
        v = 0.999 * v + 0.001 * grad.double() ** 2
        ref -= 1e-2 * (m / (1 - 0.9**n)) / ((v / (1 - 0.999**n)).sqrt() + 1e-8)
    torch.testing.assert_close(w.detach().double(), ref, rtol=0, atol=1e-6)


# ---- the Lightning loop with the fast switches ----------------------------------------------------
class RecordingAdam(torch.optim.Adam):
    """Fused Adam that records the gradient norm it is handed (after Lightning's clipping)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)
        self.norms = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None  # Lightning's closure: forward, backward, clip
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads).item())
        super().step()
        return loss


def test_bf16_mixed_with_fused_adam_clips_gradients(tmp_path):
    import lightning as L

    optimizers = []

    def make_optimizer(params):
        optimizers.append(RecordingAdam(params, lr=1e-3))
        return optimizers[-1]

    module = DiffusionModule(small_unet().train(), schedules.linear(num_timesteps=10), Denoiser, SimpleLoss(), DDIMSampler(2),
                             make_optimizer, sample_shape=(3, 8, 8), ema_decay=0.9)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(12, 3, 8, 8) * 2 - 1), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1e-3, max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=data)  # Lightning alone refuses to clip for a fused optimizer
    norms = optimizers[0].norms
    assert len(norms) == 3 and all(n <= 1e-3 * (1 + 1e-3) for n in norms)
