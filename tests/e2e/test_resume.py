"""Resuming a run at any step, mid-epoch included, continues it bit for bit; its metrics.csv keeps every part."""

import csv
import shutil
import time

import pytest
import torch
from support.runs import TINY, compose_train, run_here

from ddpm.data.device_batches import DeviceBatches
from ddpm.data.images import RandomHFlip, TensorImageDataset
from ddpm.data.resumable_loader import LoaderBatches

# 12 steps of 16 digits (112 batches an epoch, so every checkpoint is mid-epoch), a checkpoint every 4.
RUN = ["trainer.max_steps=12", "callbacks.checkpoint.every_n_train_steps=4", "callbacks.sample_grid=null"]


def train_here(run_dir, *overrides):
    """``python train.py TINY overrides`` in this process (no interpreter start): the run in ``run_dir``."""
    from ddpm.runs.train import train

    train(compose_train(*TINY, *overrides, tmp_path=run_dir))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def losses(run_dir) -> dict[int, str]:
    """step -> train/loss as written (the exact decimal string), for the rows that have one."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(file) if r["train/loss"]}


def assert_same_state(a, b):
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema.") for k in a["state_dict"])  # the EMA weights and counter are compared too
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for index, state in opt_a["state"].items():
        for name, value in state.items():  # exp_avg, exp_avg_sq, step
            assert torch.equal(value, opt_b["state"][index][name]), (index, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    train_here(run_dir, *RUN)
    return run_dir


def test_resume_mid_epoch_into_a_new_directory_is_bit_identical(whole, tmp_path):
    assert load(whole / "checkpoints" / "step_0000004.ckpt")["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batch": 4}
    ]
    train_here(tmp_path, *RUN, f"ckpt_path={whole / 'checkpoints' / 'step_0000004.ckpt'}")
    assert_same_state(load(whole / "checkpoints" / "last.ckpt"), load(tmp_path / "checkpoints" / "last.ckpt"))
    resumed = losses(tmp_path)
    assert sorted(resumed) == [5, 7, 9, 11]  # the steps after the resume point (logged every 2)
    assert resumed == {step: loss for step, loss in losses(whole).items() if step > 4}


def test_resume_into_the_same_directory_appends_to_its_metrics_and_matches(whole, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(whole, run_dir)
    before = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    train_here(run_dir, *RUN, f"ckpt_path={run_dir / 'checkpoints' / 'step_0000008.ckpt'}")
    after = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert after[: len(before)] == before  # the first part's rows are all still there, unchanged
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [1, 3, 5, 7, 9, 11, 9, 11]  # both parts
    second = {int(r["step"]): r["train/loss"] for r in rows[6:]}
    assert second == {step: loss for step, loss in losses(whole).items() if step > 8}
    assert_same_state(load(whole / "checkpoints" / "last.ckpt"), load(run_dir / "checkpoints" / "last.ckpt"))


def epochs(run_dir) -> dict[int, str]:
    """step -> epoch, for the metrics.csv rows with a train/loss."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return {int(r["step"]): r["epoch"] for r in csv.DictReader(file) if r["train/loss"]}


def test_a_finished_run_extended_with_a_larger_max_steps_continues_mid_epoch_as_if_never_stopped(
        whole, tmp_path, monkeypatch, capfd):
    # `python train.py ... trainer.max_steps=6` stops mid-epoch 0 (112 batches an epoch) and saves last.ckpt
    # at the end of training (6 is no multiple of the 4 between periodic checkpoints); then
    # `python train.py resume=RUN trainer.max_steps=12` trains on to step 12: the run 12 steps straight.
    first = [*TINY, *RUN, "trainer.max_steps=6", f"hydra.run.dir={tmp_path}"]
    code, _, err = run_here("train.py", *first, monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0, err[-3000:]
    stopped = load(tmp_path / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 6 and stopped["epoch"] == 0  # epoch 0 is not over: 6 of its 112 batches
    assert stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batch": 6}]
    code, _, err = run_here("train.py", f"resume={tmp_path}", "trainer.max_steps=12", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0, err[-3000:]
    assert_same_state(load(whole / "checkpoints" / "last.ckpt"), load(tmp_path / "checkpoints" / "last.ckpt"))
    assert losses(tmp_path) == losses(whole)  # both parts' rows, every loss as in the straight run
    assert epochs(tmp_path) == epochs(whole) == {step: "0" for step in (1, 3, 5, 7, 9, 11)}


def test_device_batches_resume_at_the_batch_after_the_last_served_with_the_same_flips():
    images = torch.randint(0, 256, (40, 1, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.arange(40), max_value=255)
    whole = list(DeviceBatches(ds, 4, hflip=True, seed=3))
    first = DeviceBatches(ds, 4, hflip=True, seed=3)
    it = iter(first)
    served = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": 3}
    resumed = DeviceBatches(ds, 4, hflip=True, seed=3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(served) + len(rest) == len(whole) == 10
    for (x, y), (x_ref, y_ref) in zip(served + rest, whole):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert any(not torch.equal(x, from_ds) for x, from_ds in ((b[0], torch.stack([ds[int(i)][0] for i in b[1]])) for b in whole))  # flips happened
    # a state of another epoch (Lightning moved on) is ignored: the epoch starts at batch 0
    other = DeviceBatches(ds, 4, hflip=True, seed=3, epoch=lambda: 1)
    other.load_state_dict(state)
    assert len(list(other)) == 10


def test_a_checkpoint_at_or_past_max_steps_is_one_line_naming_both_numbers(whole, tmp_path, monkeypatch, capfd):
    # `python train.py ...` in this process (conftest.run_here)
    code, _, err = run_here("train.py", *TINY, f"hydra.run.dir={tmp_path}", *RUN, "trainer.max_steps=2",
                            f"ckpt_path={whole / 'checkpoints' / 'step_0000004.ckpt'}", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "error: ckpt_path= holds step 4 but trainer.max_steps=2: nothing is left to train; set trainer.max_steps above 4"
    )
    assert not (tmp_path / "checkpoints").exists()


def test_new_optimizer_settings_apply_on_resume(whole, tmp_path, monkeypatch, capfd):
    code, out, err = run_here("train.py", *TINY, f"hydra.run.dir={tmp_path}", *RUN, "trainer.max_steps=10",
                              "optimizer.lr=2.5e-4", "+optimizer.weight_decay=0.01", "+optimizer.betas=[0.8,0.99]",
                              f"ckpt_path={whole / 'checkpoints' / 'step_0000008.ckpt'}", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 0, err[-3000:]
    assert "optimizer.lr=[0.00025] (the checkpoint has [0.001])" in out + err
    assert "optimizer.weight_decay=0.01 (the checkpoint has 0)" in out + err
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["lr_schedulers"][0]["base_lrs"] == [2.5e-4]
    group = last["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 2.5e-4  # warm-up (2 steps) is long over
    assert group["weight_decay"] == 0.01 and tuple(group["betas"]) == (0.8, 0.99)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
        lrs = {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(file) if r["lr-Adam"]}
    assert lrs == {9: 2.5e-4}


# 256 points in batches of 32: 8 batches an epoch, so step 4 is mid-epoch and step 8 an epoch's end.
TOY = ["experiment=toy_spiral", "data.num_points=256", "data.batch_size=32", "trainer.max_steps=12",
       "trainer.log_every_n_steps=2", "callbacks.checkpoint.every_n_train_steps=4", "callbacks.toy_plots=null",
       "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="module")
def toy_whole(tmp_path_factory):
    from ddpm.runs.train import train

    run_dir = tmp_path_factory.mktemp("toy_whole")
    train(compose_train(*TOY, tmp_path=run_dir))
    return run_dir


def test_the_toy_resumes_exactly_mid_epoch_and_across_an_epoch_end(toy_whole, tmp_path):
    from ddpm.runs.train import train

    reference = load(toy_whole / "checkpoints" / "last.ckpt")
    for step in (4, 8):
        train(compose_train(*TOY, f"ckpt_path={toy_whole / 'checkpoints' / f'step_{step:07d}.ckpt'}",
                            tmp_path=tmp_path / f"from_{step}"))
        assert_same_state(reference, load(tmp_path / f"from_{step}" / "checkpoints" / "last.ckpt"))
        assert losses(tmp_path / f"from_{step}") == {s: v for s, v in losses(toy_whole).items() if s > step}


@pytest.mark.parametrize("stop, epoch", [(5, 0), (8, 1)])  # mid-epoch 0; at epoch 0's end, so epoch 1 is next
def test_the_toy_stopped_by_max_steps_and_extended_continues_exactly(toy_whole, tmp_path, stop, epoch):
    from ddpm.runs.train import train

    # a checkpoint every 3 steps: last.ckpt at step 5 or 8 is the one saved when max_steps ends the fit
    train(compose_train(*TOY, f"trainer.max_steps={stop}", "callbacks.checkpoint.every_n_train_steps=3", tmp_path=tmp_path))
    stopped = load(tmp_path / "checkpoints" / "last.ckpt")
    assert (stopped["global_step"], stopped["epoch"]) == (stop, epoch)
    train(compose_train(*TOY, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", tmp_path=tmp_path / "extended"))
    assert_same_state(load(toy_whole / "checkpoints" / "last.ckpt"), load(tmp_path / "extended" / "checkpoints" / "last.ckpt"))
    # train/loss averages a logging window (2 steps): from step 5 on, row 5's window is cut by the stop
    after = {s: v for s, v in losses(toy_whole).items() if s > stop}
    assert {s: v for s, v in losses(tmp_path / "extended").items() if s > stop} == after


def test_point_batches_split_ranks_and_resume_where_they_stopped():
    from ddpm.data.points import PointBatches

    points = torch.arange(24.0).view(12, 2)
    ranks = [PointBatches(points, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([b[0] for r in ranks for b in r])
    assert sorted(seen[:, 0].tolist()) == points[:, 0].tolist()  # disjoint shards that cover the set
    whole = [b[0] for b in PointBatches(points, 2, seed=1)]
    first = PointBatches(points, 2, seed=1)
    it = iter(first)
    served = [next(it)[0] for _ in range(2)]
    assert first.state_dict() == {"epoch": 0, "batch": 2}
    resumed = PointBatches(points, 2, seed=1)
    resumed.load_state_dict(first.state_dict())
    both = [*served, *(b[0] for b in resumed)]
    assert len(both) == len(whole) == 6 and all(torch.equal(a, b) for a, b in zip(both, whole))


# The DataLoader path (data.on_device=false, as for image folders) with random flips, worker processes and
# dropout: 96 images in batches of 16, 6 batches an epoch, so step 4 is mid-epoch 0 and step 8 mid-epoch 1.
LOADER = [*TINY, *RUN, "data=synthetic", "data.dataset.num_images=96", "data.image_size=8", "data.channels=1",
          "data.batch_size=16", "data.on_device=false", "data.hflip=true", "model.dropout=0.1"]


def test_the_dataloader_path_with_flips_workers_and_dropout_resumes_bit_identical(tmp_path):
    from ddpm.runs.train import train

    train(compose_train(*LOADER, "data.num_workers=2", tmp_path=tmp_path / "whole"))
    checkpoints = tmp_path / "whole" / "checkpoints"
    reference = load(checkpoints / "last.ckpt")
    for step, workers, position in ((4, 0, {"epoch": 0, "batch": 4}), (8, 2, {"epoch": 1, "batch": 2})):
        ckpt = checkpoints / f"step_{step:07d}.ckpt"
        assert load(ckpt)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [position]
        run_dir = tmp_path / f"from_{step}"
        train(compose_train(*LOADER, f"data.num_workers={workers}", f"ckpt_path={ckpt}", tmp_path=run_dir))
        assert_same_state(reference, load(run_dir / "checkpoints" / "last.ckpt"))
        assert losses(run_dir) == {s: v for s, v in losses(tmp_path / "whole").items() if s > step}


class CountingDataset(torch.utils.data.Dataset):
    """An in-memory dataset that counts, across worker processes, the items it was asked for."""

    def __init__(self, dataset):
        self.dataset, self.fetched = dataset, torch.multiprocessing.Value("i", 0)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with self.fetched.get_lock():
            self.fetched.value += 1
        return self.dataset[index]


def test_loader_state_counts_batches_handed_out_not_prefetched_and_resumes_with_the_device_batches_order():
    images = torch.randint(0, 256, (40, 1, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.arange(40), max_value=255)
    whole = list(DeviceBatches(ds, 4, hflip=True, seed=3))  # the in-memory path's batches: the same ones
    counted = CountingDataset(ds)
    first = LoaderBatches(RandomHFlip(counted), 4, hflip=True, num_workers=2, seed=3)
    it = iter(first)
    served = [next(it) for _ in range(3)]
    for _ in range(500):  # the two workers load ahead (2 batches each): wait until they did
        if counted.fetched.value > 3 * 4:
            break
        time.sleep(0.01)
    assert counted.fetched.value > 3 * 4  # more was loaded than handed out ...
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": 3}  # ... and the state counts what was handed out
    resumed = LoaderBatches(RandomHFlip(ds), 4, hflip=True, num_workers=2, seed=3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert resumed.state_dict() == {"epoch": 0, "batch": 10}
    assert len(served) + len(rest) == len(whole) == 10
    for (x, y), (x_ref, y_ref) in zip(served + rest, whole):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    unflipped = [torch.stack([ds[int(i)][0] for i in y]) for _, y in whole]
    assert any(not torch.equal(x, plain) for (x, _), plain in zip(whole, unflipped))  # flips happened
    shards = [torch.cat([y for _, y in LoaderBatches(ds, 4, seed=3, rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == list(range(40))  # two ranks: disjoint shards that cover the set
