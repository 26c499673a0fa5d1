"""The plot commands write their PNGs, the named schedules are the config files, and what the
figures draw is read from NoiseSchedule."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from support.runs import CONF, ROOT
from ddpm.diffusion import schedules
from ddpm.errors import ConfigError
from ddpm.plots.__main__ import main
from ddpm.plots.images import load_image
from ddpm.plots.schedules import BAD_SCHEDULES, get_schedule, schedule_curves, schedule_names
from support.shared_data import MNIST, require


def test_schedule_curves_are_the_schedule_buffers():
    s = schedules.cosine(100)
    curves = schedule_curves(s)
    assert torch.equal(curves["beta"], s.betas.double())
    assert torch.equal(curves["alpha_bar"], s.alphas_cumprod.double())
    assert torch.equal(curves["signal"], s.sqrt_alphas_cumprod.double())
    assert torch.equal(curves["noise"], s.sqrt_one_minus_alphas_cumprod.double())
    assert torch.equal(curves["log_snr"], s.snr.log().double())


def test_the_named_schedules_are_the_config_files_and_two_bad_ones():
    files = sorted(p.stem for p in (CONF / "schedule").glob("*.yaml"))
    assert files and schedule_names() == sorted([*files, "too_little_noise", "too_much_noise"])
    # conf/schedule/linear.yaml is the DDPM schedule: beta_t = linspace(1e-4, 0.02, 1000).
    assert torch.allclose(get_schedule("linear").betas.double(), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert torch.equal(get_schedule("cosine").betas, schedules.cosine().betas)


def test_the_bad_schedules_are_overrides_of_their_config_file(tmp_path):
    shutil.copytree(CONF / "schedule", tmp_path / "schedule")
    linear = tmp_path / "schedule" / "linear.yaml"
    linear.write_text(linear.read_text().replace("num_timesteps: 1000", "num_timesteps: 50"))
    assert {base for base, _ in BAD_SCHEDULES.values()} == {"linear"}
    for name in ("linear", "too_little_noise", "too_much_noise"):
        assert get_schedule(name, conf=tmp_path).num_timesteps == 50
    assert get_schedule("cosine", conf=tmp_path).num_timesteps == 1000


def test_a_missing_conf_folder_is_one_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"no schedule configs at {tmp_path / 'schedule'}:")):
        get_schedule("linear", conf=tmp_path)
    with pytest.raises(ConfigError, match="'no_such_schedule' is not known"):
        get_schedule("no_such_schedule")


def test_the_bad_schedules_show_what_they_are_named_for():
    # abar_T = prod(1 - beta_t) over the linear betas, in float64.
    little = torch.prod(1 - torch.linspace(1e-3, 4e-3, 1000, dtype=torch.float64)).item()
    abar_T = get_schedule("too_little_noise").alphas_cumprod[-1].item()
    assert abar_T == pytest.approx(little, rel=1e-4)
    assert 0.05 < abar_T < 0.1  # x_T keeps sqrt(0.08) = 29% of the signal
    much = torch.cumprod(1 - torch.linspace(1e-2, 0.1, 1000, dtype=torch.float64), 0)
    first_pure_noise = (much < 1e-3).nonzero()[0].item()
    first = (get_schedule("too_much_noise").alphas_cumprod < 1e-3).nonzero()[0].item()
    assert first == first_pure_noise
    assert first < 300  # 70% of the steps see pure noise
    assert get_schedule("linear").alphas_cumprod[-1] < 1e-4


def test_schedules_command_writes_a_png(tmp_path):
    (path,) = main(["schedules", "--schedules", "linear", "too_little_noise", "--out", str(tmp_path)])
    assert path == tmp_path / "schedules.png" and path.stat().st_size > 20_000


@pytest.mark.parametrize("image", ["digits", "china"])
def test_forward_command_writes_a_png(image, tmp_path):
    args = ["forward", "--image", image, "--size", "32", "--schedules", "linear", "cosine", "--out", str(tmp_path)]
    (path,) = main(args)
    assert path == tmp_path / f"forward_{image}.png" and path.stat().st_size > 20_000


def test_forward_command_reads_an_image_file(tmp_path):
    src = tmp_path / "gradient.png"
    Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))).convert("RGB").save(src)
    args = ["forward", "--image", str(src), "--size", "16", "--schedules", "linear", "--out", str(tmp_path)]
    (path,) = main(args)
    assert path.name == "forward_gradient.png" and path.stat().st_size > 5_000
    x = load_image(str(src), 16)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_forward_command_reads_mnist_from_a_root():
    root = require(*MNIST)  # skips, naming the file, where ../shared/data has no MNIST
    x = load_image("mnist", 28, str(root))
    assert x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1


def test_forward1d_command_writes_a_png(tmp_path):
    (path,) = main(["forward1d", "--out", str(tmp_path)])
    assert path == tmp_path / "forward1d.png" and path.stat().st_size > 20_000


def test_bad_input_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["forward", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "missing.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["schedules", "--schedules", "no_such_schedule"])
    assert exit_info.value.code == 2 and "no_such_schedule" in capsys.readouterr().err


def test_module_runs_as_a_command(tmp_path):
    cmd = [sys.executable, "-m", "ddpm.plots", "schedules", "--schedules", "cosine", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "schedules.png").stat().st_size > 20_000


def test_paths_command_writes_a_png(tmp_path):
    (path,) = main(["paths", "--paths", "4", "--steps", "3", "--out", str(tmp_path), "--dpi", "40"])
    assert path == tmp_path / "paths_vp_vs_flow.png" and Image.open(path).size[0] > 100


def test_paths_figure_measures_both_processes():
    # The flow column's conditional paths (1 - t) x0 + t eps are segments: straightness 1 (evaluation.paths
    # tests the ODE's); VP's are arcs.
    from ddpm.diffusion.processes import FlowProcess, VPProcess
    from ddpm.evaluation.paths import straightness
    from ddpm.plots.paths import all_paths

    _, paths = all_paths({"vp": VPProcess(schedules.linear(100)), "flow": FlowProcess()}, num_paths=5, steps=4)
    assert torch.allclose(straightness(paths["flow"]["conditional"]), torch.ones(5, dtype=torch.float64))
    assert (straightness(paths["vp"]["conditional"]) < 1 - 1e-6).all()
    assert all(p["ode"].shape == (5, 5, 2) for p in paths.values())  # 4 Heun steps' states and the output
