"""The bake-off (benchmarks/bakeoff.py): every system starts, trains on the same batches and yields scored
samples in --quick mode; networks are matched in parameter count; each system's pixel path maps the data's
black to black (a system that drew grey backgrounds for its conventions' sake would be handicapped)."""

import importlib.util
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from support.runs import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bakeoff  # noqa: E402
from bakeoff_contenders import PARAM_TOLERANCE, Setup, build_ours, closest, count  # noqa: E402

KDIFFUSION = importlib.util.find_spec("k_diffusion") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bakeoff")
    assert bakeoff.main(["--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "bakeoff.json").read_text())


def test_quick_mode_trains_and_scores_every_system(quick_run):
    out, report = quick_run
    (result,) = report["results"]
    rows = {r["name"]: r for r in result["rows"]}
    ran = {r["system"] for r in rows.values() if "skipped" not in r}
    assert {"ours", "diffusers", "lucidrains"} | ({"kdiffusion"} if KDIFFUSION else set()) <= ran
    for name in ("diffusers", "lucidrains") + (("kdiffusion",) if KDIFFUSION else ()):
        assert {f"{name} (defaults)", f"{name} (scaled)"} <= {r["system"] + f" ({r['setting']})" for r in rows.values()}
    for r in rows.values():
        if "skipped" in r:
            continue
        assert r["steps"] > 0 and r["train_seconds"] >= report["args"]["budget"]
        assert [p["steps"] for p in r["points"]] == sorted(p["steps"] for p in r["points"]) and len(r["points"]) == 2
        assert all(math.isfinite(p["fd"]) and 0 <= p["confident"] <= 1 for p in r["points"])
        assert abs(r["params"] - result["target_params"]) <= PARAM_TOLERANCE * result["target_params"]
        with np.load(out / f"{bakeoff.slug(r['name'])}.npz") as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape == (report["args"]["num_samples"], 8, 8, 1)
    scaled = [r for r in rows.values() if r.get("setting") == "scaled"]
    assert all(r["recipe"]["lr"] == report["args"]["scaled_lr"] for r in scaled)
    table = (out / "bakeoff.md").read_text()
    assert all(name in table for name in rows) and "data floor" in table
    assert (out / "fd_vs_time_digits.png").stat().st_size > 0 and (out / "samples_digits.png").stat().st_size > 0


def test_our_row_scaled_to_the_budget_decays_to_zero_where_our_first_row_stopped(quick_run):
    _, report = quick_run
    rows = {r["name"]: r for r in report["results"][0]["rows"]}
    first, scaled = rows["ours (quick)"], rows["ours (quick, cosine decay to the budget)"]
    assert scaled["recipe"]["lr_decay"] == f"cosine to 0 at step {first['steps']}"
    assert rows["ours (quick)"]["recipe"]["lr_decay"] == "none"


def test_the_floor_is_the_evaluator_on_as_many_real_test_images(quick_run):
    _, report = quick_run
    (result,) = report["results"]
    dm = bakeoff.datamodule("digits", "")
    evaluator = bakeoff.Evaluator(dm, fid=False, device=torch.device("cpu"))
    n = report["args"]["num_samples"]
    assert result["floor"]["count"] == n
    assert result["floor"]["fd"] == pytest.approx(evaluator.score(evaluator.test[:n])["fd"], rel=1e-9)


def test_the_closest_network_is_within_five_percent_or_refused():
    widths = [dict(width=w) for w in (4, 8, 16, 32)]
    build = lambda width: torch.nn.Linear(width, width)  # noqa: E731  (w^2 + w parameters)
    net, chosen = closest(build, widths, target=280, what="linear")
    assert chosen == {"width": 16} and count(net) == 272 and not net.weight.is_meta  # 2.9% off, built for real
    with pytest.raises(ValueError, match="within 5%"):
        closest(build, widths, target=200, what="linear")  # 72 or 272: both more than 5% off 200


# ---- the pixel path: each system's conventions ([0, 1] or [-1, 1], NCHW or NHWC) end to end ------------------
# All data is one image x* (top-left quadrant white, the rest black). A network that predicts exactly what its
# system's parameterization asks for that data (eps, v, or the preconditioned EDM output) makes every sampler
# return x*, so the uint8 samples must be x* itself: 255 in the quadrant, 0 elsewhere. A wrapper that read a
# system's [0, 1] output as [-1, 1] would give grey (128) backgrounds; a transposed layout, the wrong corner.
SIZE = 8


def target_image() -> torch.Tensor:
    x = -torch.ones(1, 1, SIZE, SIZE)
    x[..., : SIZE // 2, : SIZE // 2] = 1.0
    return x  # (1, 1, H, W) in [-1, 1]


def exact_eps(x, abar):
    """eps = (x_t - sqrt(abar) x*) / sqrt(1 - abar): the noise of x_t if the data is x*."""
    abar = torch.as_tensor(abar, dtype=torch.float64).reshape(-1, 1, 1, 1)
    return ((x.double() - abar.sqrt() * target_image().double()) / (1 - abar).sqrt()).to(x.dtype)


def stand_in(system: str, contender, monkeypatch) -> None:
    """Replace the forward of the system's network class by the exact prediction for the data x*."""
    if system == "ours":
        module = contender.handle
        abar = module.schedule.alphas_cumprod
        monkeypatch.setattr(type(module.net), "forward", lambda self, x, t, *a: exact_eps(x, abar[t.cpu()]))
    elif system == "diffusers":
        abar = contender.handle.scheduler.alphas_cumprod

        def forward(self, sample, timestep, *a, **k):
            t = torch.as_tensor(timestep).reshape(-1).long().cpu()
            return SimpleNamespace(sample=exact_eps(sample, abar[t]))

        monkeypatch.setattr(type(contender.net), "forward", forward)
    elif system == "lucidrains":
        abar = contender.handle.alphas_cumprod.cpu()

        def forward(self, x, time, x_self_cond=None):  # pred_v: v = sqrt(abar) eps - sqrt(1 - abar) x*
            a = abar[time.cpu()].reshape(-1, 1, 1, 1).to(x.dtype)
            return a.sqrt() * exact_eps(x, abar[time.cpu()]) - (1 - a).sqrt() * target_image()

        monkeypatch.setattr(type(contender.net), "forward", forward)
    else:  # k-diffusion: Denoiser output c_skip x + c_out F(c_in x, sigma) = x*
        sd = contender.handle.sigma_data

        def forward(self, input, sigma, *a, **k):
            s = sigma.reshape(-1, 1, 1, 1).double()
            x = input.double() * (s**2 + sd**2).sqrt()  # undo c_in
            c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
            return ((target_image().double() - c_skip * x) / c_out).to(input.dtype)

        monkeypatch.setattr(type(contender.net), "forward", forward)


@pytest.mark.parametrize("system", ["ours", "diffusers", "lucidrains", "kdiffusion"])
def test_each_system_samples_the_one_image_its_exact_network_knows(system, monkeypatch):
    if system == "kdiffusion" and not KDIFFUSION:
        pytest.skip("k-diffusion is not installed (pip install --no-deps -r benchmarks/requirements-kdiffusion.txt)")
    from bakeoff_contenders import PEERS, ours_network

    recipe = bakeoff.OURS["quick"][0]
    layout, target = ours_network(recipe[1], SIZE, 1)
    setup = Setup(SIZE, 1, 4, 100, torch.device("cpu"), target, quick=True)
    torch.manual_seed(0)
    if system == "ours":
        contender = build_ours(setup, recipe[1], sampler=recipe[2])
    else:
        contender = PEERS[system](setup, "defaults", None, layout)
    stand_in(system, contender, monkeypatch)
    images = bakeoff.to_uint8(contender.sample(3, 0))  # (3, H, W, 1) through the one uint8 path
    expected = bakeoff.to_uint8(target_image()).repeat(3, 0)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_a_cut_short_run_keeps_its_rows(quick_run, tmp_path):
    """Each finished row is written to partial_<data>.json; --keep takes those rows instead of training again."""
    out, report = quick_run
    (result,) = report["results"]
    partial = json.loads((out / "partial_digits.json").read_text())
    assert [r["name"] for r in partial] == [r["name"] for r in result["rows"]]
    assert bakeoff.main(["--quick", "--systems", "ours", "lucidrains", "--keep", str(out / "partial_digits.json"),
                         "--out", str(out)]) == 0  # a peer's row is named for its library, not for --systems
    again = json.loads((out / "bakeoff.json").read_text())["results"][0]["rows"]
    before = {r["name"]: r for r in result["rows"]}
    assert [r["name"] for r in again] == ["ours (quick)", "denoising-diffusion-pytorch (defaults)",
                                         "denoising-diffusion-pytorch (scaled)", "ours (quick, cosine decay to the budget)"]
    assert all(r["points"] == before[r["name"]]["points"] for r in again)  # kept, not trained again


def test_recipe_step_time_prints_a_timed_row_per_variant(capsys):
    import recipe_step_time

    assert recipe_step_time.main(["--variants", "", "module.channels_last=true", "--steps", "1", "--warmup", "1",
                                  "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| eager", "| module."))]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)  # ms a step
