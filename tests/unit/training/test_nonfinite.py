"""A non-finite loss or gradient skips its update (weights, optimizer, EMA untouched), is counted, and too
many in a row stop the run with one line and a non-zero exit, its checkpoints finite."""

import csv

import pytest
import torch
from support.runs import TINY, run_here
from torch import nn

from ddpm.errors import ConfigError
from ddpm.training.ema import make_ema
from ddpm.training.nonfinite import NonFiniteError, NonFiniteGuard


def step_with(guard, loss_value, fused):
    """One guarded Adam step of a 3-parameter model from a fixed state; returns (param, optimizer, flag)."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = torch.optim.Adam([p], lr=0.1, fused=fused)
    p.grad = torch.ones(3)
    opt.step()  # some optimizer state to protect
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    p.grad = torch.full((3,), loss_value)
    finite, _ = guard.check(torch.tensor(loss_value), [p.grad], opt, scaled=False)
    opt.step()
    return p, opt, finite, before


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_leaves_weights_and_optimizer_state_exactly_as_they_were(fused):
    guard = NonFiniteGuard(5)
    for bad in (float("nan"), float("inf")):
        p, opt, finite, (p0, state0) = step_with(guard, bad, fused)
        assert not bool(finite)
        assert torch.equal(p.detach(), p0)
        for name, value in opt.state[p].items():  # exp_avg, exp_avg_sq and the step count
            assert torch.equal(value, state0[name]), name
    p, opt, finite, (p0, _) = step_with(guard, 0.5, fused)  # a finite step still updates
    assert bool(finite) and not torch.equal(p.detach(), p0)
    assert opt.state[p]["step"].item() == 2
    assert guard.state_dict() == {"total": 2, "consecutive": 0}


def test_consecutive_count_resets_on_a_finite_step_and_stops_at_the_limit():
    guard = NonFiniteGuard(3)
    for step, value in enumerate([float("nan"), float("nan"), 1.0, float("nan"), float("nan")], start=1):
        step_with(guard, value, fused=True)
        guard.stop_if_too_many(step)  # 2 in a row, then 2 again: never 3
    step_with(guard, float("nan"), fused=True)
    with pytest.raises(NonFiniteError, match=r"stopped at step 6: the last 3 steps .*max_nonfinite_steps=3"):
        guard.stop_if_too_many(6)
    assert guard.state_dict() == {"total": 5, "consecutive": 3}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_the_limit_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match=rf"max_nonfinite_steps={bad!r} is not allowed: use an integer >= 1"):
        NonFiniteGuard(bad)


def test_a_disabled_ema_update_changes_nothing_and_does_not_count():
    net = nn.Linear(2, 2)
    ema = make_ema(net, decay=0.9)
    ema.update_parameters(net)
    snapshot = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        net.weight.fill_(7.0)
    ema.update_parameters(net, enabled=torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), snapshot)) and ema.n_averaged.item() == 1
    ema.update_parameters(net, enabled=torch.tensor(True))
    # n = 1: d = min(0.9, 2/11), theta_ema <- d theta_ema + (1 - d) theta
    d = 2 / 11
    torch.testing.assert_close(ema.module.weight, d * snapshot[0] + (1 - d) * torch.full((2, 2), 7.0))
    assert ema.n_averaged.item() == 2


def test_a_run_whose_net_turns_nan_stops_with_one_line_and_keeps_finite_checkpoints(tmp_path, monkeypatch, capfd):
    # Finite for 6 steps, NaN from the 7th (global_step 6) on; 3 in a row stop it after the 9th step.
    # `python train.py ...` in this process (support.runs.run_here), where tests/support/nan_net.py is importable
    code, _, err = run_here(
        "train.py", *TINY, f"hydra.run.dir={tmp_path}", "model._target_=support.nan_net.NaNAfter", "+model.nan_after=6",
        "module.max_nonfinite_steps=3", "trainer.max_steps=40", "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.sample_grid=null", monkeypatch=monkeypatch, capfd=capfd,
    )
    assert code != 0
    assert "Traceback" not in err, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: training stopped at step 9: the last 3 steps had a non-finite loss"), last_line
    assert "max_nonfinite_steps=3" in last_line
    ckpts = {p.name: torch.load(p, map_location="cpu", weights_only=False) for p in (tmp_path / "checkpoints").iterdir()}
    assert sorted(ckpts) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt", "step_0000006.ckpt", "step_0000008.ckpt"]
    assert ckpts["last.ckpt"]["global_step"] == 8
    for name, ckpt in ckpts.items():
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()), name
    # steps 7 and 8 were skipped: weights, EMA and optimizer moments at step 8 are those of step 6
    six, eight = ckpts["step_0000006.ckpt"], ckpts["step_0000008.ckpt"]
    for key, value in six["state_dict"].items():
        assert torch.equal(value, eight["state_dict"][key]), key
    for index, state in six["optimizer_states"][0]["state"].items():
        assert all(torch.equal(v, eight["optimizer_states"][0]["state"][index][k]) for k, v in state.items())
    four = ckpts["step_0000004.ckpt"]["state_dict"]  # whereas finite steps 5 and 6 did change them
    assert not all(torch.equal(value, four[key]) for key, value in six["state_dict"].items() if key.startswith("net."))
    assert not all(torch.equal(value, four[key]) for key, value in six["state_dict"].items() if key.startswith("ema."))
    assert ckpts["step_0000008.ckpt"]["nonfinite_steps"] == {"total": 2, "consecutive": 2}
    with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
        counts = {int(r["step"]): float(r["train/nonfinite_steps"]) for r in csv.DictReader(file) if r["train/nonfinite_steps"]}
    assert counts == {1: 0.0, 3: 0.0, 5: 0.0, 7: 2.0}  # logged at the 2nd, 4th, 6th, 8th step
