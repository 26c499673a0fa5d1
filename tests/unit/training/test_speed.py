"""The speed switches compute the same function as the plain path: EMA without host syncs,
channels-last, bf16 autocast, torch.compile, fused Adam, data served from device memory; FLOPs."""

import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from support.runs import ROOT
from ddpm.diffusion import schedules
from ddpm.data.datamodule import ImageDataModule
from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import TensorImageDataset, digits
from ddpm.training.ema import ema_decay_fn, make_ema
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.training.module import DiffusionModule
from ddpm.training.perf import forward_flops
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


# ---- data served from device memory ------------------------------------------------------------
def ramp_dataset(n=10):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()
    return TensorImageDataset(images, torch.arange(n), max_value=9)


def test_device_batches_serve_every_image_once_per_epoch_scaled_like_the_dataset():
    ds = ramp_dataset(10)
    batches = list(DeviceBatches(ds, batch_size=3))
    assert len(batches) == 3  # 10 // 3, the partial batch dropped
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist())) == 9
    for images, ys in batches:
        for image, y in zip(images, ys):
            torch.testing.assert_close(image, ds[int(y)][0])  # the same [-1, 1] scaling as __getitem__


def test_device_batches_split_each_epoch_across_ranks_without_overlap():
    ds = ramp_dataset(12)
    epoch = SimpleNamespace(n=0)
    ranks = [DeviceBatches(ds, 2, seed=5, rank=r, world_size=3, epoch=lambda: epoch.n) for r in range(3)]
    seen = [torch.cat([y for _, y in r]) for r in ranks]
    assert sorted(torch.cat(seen).tolist()) == list(range(12))  # disjoint shards that cover the epoch
    epoch.n = 1
    assert not torch.equal(torch.cat([y for _, y in ranks[0]]), seen[0])  # a new order each epoch


def test_device_batches_flip_about_half_the_images():
    images = torch.arange(6, dtype=torch.uint8).view(1, 1, 1, 6).expand(400, 1, 1, 6).contiguous()
    ds = TensorImageDataset(images, torch.zeros(400, dtype=torch.long), max_value=5)
    x = torch.cat([b for b, _ in DeviceBatches(ds, 100, hflip=True)])
    plain, mirrored = ds[0][0], ds[0][0].flip(-1)
    is_plain = (x == plain).flatten(1).all(1)
    is_mirrored = (x == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_mirrored).all()) and 140 < int(is_mirrored.sum()) < 260


def test_datamodule_serves_in_memory_data_from_the_device_and_folders_through_a_dataloader(tmp_path):
    from PIL import Image

    dm = ImageDataModule(digits, image_size=8, channels=1, batch_size=16)
    assert isinstance(dm.train_dataloader(), DeviceBatches)
    assert not isinstance(ImageDataModule(digits, 8, 1, 16, on_device=False).train_dataloader(), DeviceBatches)
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(tmp_path / f"{i}.png")
    from functools import partial

    from ddpm.data.images import DataError, image_folder

    folder = partial(image_folder, str(tmp_path), 8, 1)
    assert not isinstance(ImageDataModule(folder, 8, 1, 2).train_dataloader(), DeviceBatches)
    with pytest.raises(DataError, match="on_device=true needs an in-memory dataset"):
        ImageDataModule(folder, 8, 1, 2, on_device=True).train_dataloader()


# ---- FLOPs --------------------------------------------------------------------------------------
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


# ---- the benchmark script itself -----------------------------------------------------------------
def test_throughput_benchmark_quick_mode_prints_its_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import throughput

    out = tmp_path / "bench.json"
    code = throughput.main(["--quick", "--systems", "ours", "diffusers", "--json", str(out)])
    import json

    result = json.loads(out.read_text())
    assert code == 0 and not result["failures"]
    systems = {r["system"] for r in result["rows"]}
    assert "ours" in systems
    for row in result["rows"]:
        assert row["train_img_s"] > 0 and row["sample_nfe_s"] > 0 and row["err"] < 1e-4  # fp32 on the CPU


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
