"""The LightningModule's own behaviour: EMA, warm-up, per-rank noise, sampling."""

import functools
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.training.ema import make_ema
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.losses import SimpleLoss
from ddpm.training.lr_schedule import warmup_cosine_lr
from ddpm.training.module import DiffusionModule
from ddpm.diffusion.samplers import DDPMSampler


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x, t):
        return self.conv(x)


def make_module(**kwargs):
    return DiffusionModule(
        TinyNet(), schedules.linear(num_timesteps=10), Denoiser, SimpleLoss(), DDPMSampler(),
        lambda params: torch.optim.Adam(params, lr=1e-2), sample_shape=(1, 4, 4), **kwargs,
    )


def test_ema_decay_warms_up_as_one_plus_n_over_ten_plus_n():
    net = nn.Linear(2, 2, bias=False)
    ema = make_ema(net, decay=0.9999)
    history = []
    for n in range(4):
        with torch.no_grad():
            net.weight.fill_(float(n + 1))
        ema.update_parameters(net)
        history.append(ema.module.weight[0, 0].item())
    expected = [1.0]  # the first update copies
    for n, w in zip(range(1, 4), (2.0, 3.0, 4.0)):
        d = min(0.9999, (1 + n) / (10 + n))
        expected.append(d * expected[-1] + (1 - d) * w)
    assert history == pytest.approx(expected, rel=1e-6)


def test_ema_without_warmup_uses_the_fixed_decay():
    net = nn.Linear(1, 1, bias=False)
    ema = make_ema(net, decay=0.9, warmup=False)
    ema.update_parameters(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update_parameters(net)
    assert ema.module.weight.item() == pytest.approx(net.weight.item() - 0.9, rel=1e-6)


def test_ema_averages_parameters_only_and_holds_no_schedule():
    module = make_module()
    names = dict(module.ema.named_buffers())
    assert not any("schedule" in n or "alphas" in n for n in list(names) + [n for n, _ in module.ema.named_parameters()])
    for value in (5.0, 7.0):
        module.net.calls.fill_(value)
        module.ema.update_parameters(module.net)
    assert module.ema.module.calls.item() == 7.0  # buffers are copied from the network, never averaged
    assert not any(p.requires_grad for p in module.ema.parameters())  # invisible to the optimizer and DDP


def test_optimizer_sees_the_network_only_and_warms_up_linearly():
    module = make_module(lr_schedule=functools.partial(warmup_cosine_lr, warmup_steps=4))
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(p.numel() for p in module.net.parameters())
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def test_cosine_decay_falls_from_the_warmed_up_rate_to_zero_at_max_steps():
    module = make_module(lr_schedule=functools.partial(warmup_cosine_lr, warmup_steps=4, decay_steps=20))  # max_steps 20
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(23):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2.5e-3)  # warm-up: 1/4 of the rate, the cosine at its top
    assert lrs[2] == pytest.approx(7.5e-3 * 0.5 * (1 + math.cos(math.pi / 10)))  # both at once
    assert lrs[5] == pytest.approx(1e-2 * (2 + math.sqrt(2)) / 4)  # cos(pi/4) = sqrt(2)/2
    assert lrs[10] == pytest.approx(5e-3)  # half-way: half the rate
    assert lrs[20:] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # 0 at max_steps, and after
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # falls monotonically once warmed up


def test_noise_generators_differ_between_ranks():
    draws = []
    for rank in (0, 1):
        module = make_module()
        module._trainer = SimpleNamespace(global_rank=rank, global_step=0)
        torch.manual_seed(0)  # seed_everything gives every rank the same seed
        module.on_fit_start()
        draws.append(torch.randn(4, generator=module._noise))
    assert not torch.equal(draws[0], draws[1])


def test_sample_is_reproducible_and_uses_ema_weights():
    module = make_module()
    with torch.no_grad():
        module.net.conv.weight.normal_()
    a = module.sample(3, generator=torch.Generator().manual_seed(0))
    b = module.sample(3, generator=torch.Generator().manual_seed(0))
    raw = module.sample(3, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert a.shape == (3, 1, 4, 4) and torch.equal(a, b)
    assert not torch.equal(a, raw)  # the EMA copy was never updated, so it differs from the raw net
    assert a.min() >= -1 and a.max() <= 1


def test_logged_loss_is_the_mean_over_each_logging_window(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    recorded = []

    class RecordingLoss(SimpleLoss):
        def __call__(self, *args, **kwargs):
            per_sample, t = super().__call__(*args, **kwargs)
            recorded.append(per_sample.detach().clone())
            return per_sample, t

    module = DiffusionModule(TinyNet(), schedules.linear(num_timesteps=10), Denoiser, RecordingLoss(), DDPMSampler(),
                             lambda params: torch.optim.Adam(params, lr=1e-2), sample_shape=(1, 4, 4))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(12, 1, 4, 4)), batch_size=3)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=2, logger=CSVLogger(tmp_path, name="log"),
                        enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, train_dataloaders=data)
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        logged = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    want = [torch.cat(recorded[0:2]).mean().item(), torch.cat(recorded[2:4]).mean().item()]
    assert logged == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"warmup_steps": -1}, "lr_schedule.warmup_steps=-1 is not allowed"),
    ({"warmup_steps": 1.5}, "lr_schedule.warmup_steps=1.5 is not allowed"),
    ({"decay_steps": -1}, "lr_schedule.decay_steps=-1 is not allowed: the cosine needs the run's length"),
])
def test_bad_lr_schedule_options_are_one_line(options, message):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        warmup_cosine_lr(optimizer, **options)
    assert "\n" not in str(err.value)
