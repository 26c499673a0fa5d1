"""Bad input to train.py and evaluate.py: each case is one stderr line naming the value, exit code 2,
before any work starts (issue 10, "Bad input"); plus the .npz layout rule (the pixel scaling of 16-bit
and float image files: unit/data/test_pixel_scaling.py).

The sweep runs the real entry points in this process (``runpy`` of train.py / evaluate.py with
``sys.argv`` set, which is what ``python train.py ...`` does after its imports), so that a case costs
a config composition, not a Python start; ``test_the_in_process_sweep_matches_real_processes`` runs
a few cases as real processes and finds the same exit code and the same stderr line.
"""

import logging
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from support.runs import DATA, ROOT

LEGACY_RUN = DATA / "legacy_run"  # a clean toy run: config.yaml + checkpoints/last.ckpt
TINY = ["model=unet_tiny", "schedule.num_timesteps=20", "trainer.accelerator=cpu", "trainer.max_steps=1",
        "callbacks.progress_bar.refresh_rate=0", "callbacks.sample_grid.every_n_steps=0"]
FOLDER = ["data=folder", "data.image_size=8", "model.attn_resolutions=[]"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad file the cases name, made once: {name: path}."""
    d = tmp_path_factory.mktemp("bad")
    f = {}

    def npz(name, **arrays):
        np.savez(d / name, **arrays)
        f[name] = d / name

    npz("ok.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    npz("object.npz", images=np.array([1, "a", None], dtype=object))
    npz("nchw.npz", images=np.zeros((4, 3, 8, 8), np.uint8))
    npz("ambiguous.npz", images=np.zeros((4, 3, 8, 3), np.uint8))
    npz("float.npz", images=np.zeros((4, 8, 8, 3), np.float32))
    npz("five_d.npz", images=np.zeros((4, 8, 8, 3, 1), np.uint8))
    (d / "text.npz").write_text("not an npz\n")
    (d / "empty.npz").write_bytes(b"")
    (d / "truncated.npz").write_bytes((d / "ok.npz").read_bytes()[:200])
    np.save(d / "single.npy", np.zeros((4, 8, 8, 3), np.uint8))
    shutil.move(d / "single.npy", d / "single.npz")
    for name in ("text.npz", "empty.npz", "truncated.npz", "single.npz"):
        f[name] = d / name
    ckpt = (LEGACY_RUN / "checkpoints" / "last.ckpt").read_bytes()
    for name, data in (("empty.ckpt", b""), ("truncated.ckpt", ckpt[: len(ckpt) // 2]), ("text.ckpt", b"hello")):
        (d / name.split(".")[0]).mkdir()
        (d / name.split(".")[0] / name).write_bytes(data)  # alone in its directory: nothing to fall back to
        f[name] = d / name.split(".")[0] / name
    f["toy.ckpt"] = LEGACY_RUN / "checkpoints" / "last.ckpt"  # a 2-D MLP: another model for the U-Net
    # run directories for evaluate.py: config.yaml beside checkpoints/
    for name, data in (("run_truncated", ckpt[: len(ckpt) // 2]), ("run_empty", b""), ("run_other", ckpt)):
        (d / name / "checkpoints").mkdir(parents=True)
        (d / name / "checkpoints" / "last.ckpt").write_bytes(data)
        cfg = OmegaConf.load(LEGACY_RUN / "config.yaml")
        if name == "run_other":
            cfg.model.hidden = 32  # the checkpoint holds hidden=16
        OmegaConf.save(cfg, d / name / "config.yaml")
        f[name] = d / name / "checkpoints" / "last.ckpt"
    (d / "a_file").write_text("x")
    f["a_file"] = d / "a_file"
    f["missing"] = d / "missing.ckpt"
    f["dir"] = d
    images = d / "images"  # one 8x8 PNG (the first: setup reads it) and files that are no images
    (images / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(images / "a" / "0.png")
    for i in range(1, 8):
        (images / "a" / f"{i}.png").write_bytes(b"not a png")
    f["images"] = images
    (d / "one_image").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "one_image" / "0.png")
    f["one_image"] = d / "one_image"
    return f


# (script, arguments, words of the one stderr line); {name} is a path from ``files``
TRAIN_CASES = [
    ("data.batch_size=0", "data.batch_size=0 is not allowed: use an integer >= 1"),
    ("schedule.beta_end=1.5", "beta_end=1.5 is not allowed"),
    ("data.batch_size=-4", "data.batch_size=-4 is not allowed"),
    ("data.batch_size=abc", "data.batch_size='abc' is not allowed"),
    ("data.num_workers=-1", "data.num_workers=-1 is not allowed: use an integer >= 0"),
    ("data.hflip=maybe", "data.hflip='maybe' is not allowed: use true or false"),
    ("data.hflip=2", "data.hflip=2 is not allowed: use true or false"),
    ("data.channels=2", "data.channels=2 is not allowed: use one of 1, 3"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is not allowed: use a number > 0"),
    ("optimizer.lr=0", "optimizer.lr=0 is not allowed: use a number > 0"),
    ("optimizer.lr=abc", "optimizer.lr='abc' is not allowed: use a number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan is not allowed"),
    ("optimizer=adamw optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 is not allowed"),
    ("seed=abc", "seed='abc' is not allowed: use an integer from 0 to 4294967295"),
    ("seed=-1", "seed=-1 is not allowed"),
    ("seed=99999999999", "seed=99999999999 is not allowed"),
    ("float32_matmul_precision=tf32", "float32_matmul_precision='tf32' is not allowed"),
    ("trainer.max_steps=0", "trainer.max_steps=0 is not allowed: use an integer >= 1, or -1"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5 is not allowed"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc' is not allowed: use an integer >= 1, or -1"),
    ("lr_schedule=cosine trainer.max_steps=-1", "lr_schedule.decay_steps=-1 is not allowed: use an integer >= 1 (or null"),
    # the trainer's own options, checked before Lightning sees them (which printed Hydra's five-line block)
    ("trainer.accelerator=auto trainer.devices=0", "trainer.devices=0 is not allowed: use an integer >= 1, -1 (every device), auto, or a list"),
    ("trainer.accelerator=gpu trainer.devices=-2", "trainer.devices=-2 is not allowed: use an integer >= 1, -1 (every device)"),
    ("trainer=gpu trainer.devices=[0,x]", "trainer.devices=[0, 'x'] is not allowed: use an integer >= 1"),
    ("trainer.devices=0", "trainer.devices=0 is not allowed: use an integer >= 1 (CPU processes) or auto, as trainer.accelerator=cpu"),
    ("trainer.devices=[0,1]", "trainer.devices=[0, 1] is not allowed: use an integer >= 1 (CPU processes) or auto"),
    ("trainer.precision=bf17", "trainer.precision='bf17' is not allowed: use one of 32-true, bf16-mixed, 16-mixed"),
    ("trainer.precision=16-mixedd", "trainer.precision='16-mixedd' is not allowed: use one of 32-true"),
    ("trainer.accelerator=gpux", "trainer.accelerator='gpux' is not allowed: use one of auto, gpu, cpu, cuda"),
    ("trainer.strategy=ddpx", "trainer.strategy='ddpx' is not allowed: use auto, ddp, ddp_spawn, fsdp"),
    ("trainer=ddp trainer.devices=2 trainer.num_nodes=0", "trainer.num_nodes=0 is not allowed: use an integer >= 1"),
    ("+trainer.max_epochs=-5", "trainer.max_epochs=-5 is not allowed: use an integer >= 1, or -1 (no epoch limit), or null"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 is not allowed"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 is not allowed"),
    ("schedule.num_timesteps=0", "schedule.num_timesteps=0 is not allowed"),
    ("sampler=ddim sampler.steps=5000", "sampler.steps=5000 is not allowed: use an integer from 1 to schedule.num_timesteps=20"),
    ("sampler=ddim sampler.steps=21", "sampler.steps=21 is not allowed: use an integer from 1 to schedule.num_timesteps=20"),
    ("sampler=ddim sampler.steps=0", "sampler.steps=0 is not allowed"),
    ("sampler=dpm_solver sampler.steps=100", "sampler.steps=100 is not allowed"),
    ("lr_schedule.warmup_steps=-1", "lr_schedule.warmup_steps=-1 is not allowed"),
    ("module.ema_decay=1.5", "module.ema_decay=1.5 is not allowed: use a number from 0 to 1"),
    ("module.max_nonfinite_steps=0", "module.max_nonfinite_steps=0 is not allowed"),
    ("callbacks.sample_grid.num_samples=0", "callbacks.sample_grid.num_samples=0 is not allowed"),
    ("callbacks.checkpoint.every_n_train_steps=-3", "callbacks.checkpoint.every_n_train_steps=-3 is not allowed"),
    ("data=spiral model=mlp data.num_points=0", "data.num_points=0 is not allowed"),
    ("data=spiral model=mlp data.batch_size=0", "data.batch_size=0 is not allowed"),
    ("ckpt_path={missing}", "ckpt_path='{missing}' is not allowed: use auto or a file that exists"),
    ("ckpt_path={dir}", "ckpt_path='{dir}' is not allowed: use auto or a file, not a directory"),
    ("ckpt_path={empty.ckpt}", "ckpt_path={empty.ckpt} is damaged"),
    ("ckpt_path={truncated.ckpt}", "ckpt_path={truncated.ckpt} is damaged"),
    ("ckpt_path={text.ckpt}", "ckpt_path={text.ckpt} is damaged"),
    ("ckpt_path={toy.ckpt}", "ckpt_path='{toy.ckpt}' does not fit this model: it has no net."),
    ("data=spiral model=mlp model.hidden=16 model.layers=1 model.coord_embed_dim=8 schedule=cosine schedule.num_timesteps=20 "
     "schedule.s=0.02 ckpt_path={toy.ckpt}", "ckpt_path='{toy.ckpt}' was trained with another noise schedule"),
    ("data=spiral model=mlp ckpt_path={toy.ckpt}",
     "ckpt_path='{toy.ckpt}' does not fit this model: net.time_mlp.0.weight has shape [16, 32] in the checkpoint but [64, 32]"),
    ("hydra.run.dir={a_file}/run", "hydra.run.dir='{a_file}/run' cannot be used: '{a_file}' is a file"),
    ("logger=wandb logger.project=a/b", "logger.project='a/b' is not allowed: use a W&B project name"),
    ("logger=wandb logger.log_model=maybe", "logger.log_model='maybe' is not allowed: use one of False, True, 'all'"),
    # found only once the data is read: still one line, nothing before it on stderr
    ("data=mnist data.root={dir}/nowhere model.attn_resolutions=[]", "MNIST not found under '{dir}/nowhere'"),
    (" ".join(FOLDER) + " data.root={dir}/nowhere", "image folder '{dir}/nowhere' does not exist"),
    (" ".join(FOLDER) + " data.root={one_image} data.batch_size=4", "dataset has 1 images, fewer than data.batch_size=4"),
    (" ".join(FOLDER) + " data.root={images} data.batch_size=2 data.num_workers=2",  # raised in a DataLoader worker
     "cannot decode image '{images}/a/"),
]
EVALUATE_CASES = [
    ("samples_path={ok.npz} num_samples=0", "num_samples=0 is not allowed: use an integer >= 1"),
    ("samples_path={ok.npz} batch_size=0", "batch_size=0 is not allowed: use an integer >= 1"),
    ("samples_path={ok.npz} batch_size=abc", "batch_size='abc' is not allowed"),
    ("samples_path={ok.npz} seed=abc", "seed='abc' is not allowed"),
    ("samples_path={ok.npz} precision=fp16", "precision='fp16' is not allowed: use one of 'fp32', 'bf16'"),
    ("samples_path={ok.npz} kid_subsets=0", "kid_subsets=0 is not allowed"),
    ("samples_path={ok.npz} progress=maybe", "progress='maybe' is not allowed: use true or false"),
    ("samples_path={ok.npz} reference_count=0", "reference_count=0 is not allowed"),
    ("samples_path={ok.npz} sampler=ddim sampler.steps=0", "sampler.steps=0 is not allowed"),
    ("samples_path={object.npz}", "'{object.npz}' array 'images' cannot be read: an object array"),
    ("samples_path={text.npz}", "'{text.npz}' is not an .npz of arrays"),
    ("samples_path={truncated.npz}", "'{truncated.npz}' is not an .npz of arrays"),
    ("samples_path={single.npz}", "'{single.npz}' is a single .npy array, not an .npz"),
    ("samples_path={empty.npz}", "samples_path='{empty.npz}' is not allowed: use a file that is not empty"),
    ("samples_path={missing}", "samples_path='{missing}' is not allowed: use a file that exists"),
    ("samples_path={nchw.npz}", "'{nchw.npz}' has shape (4, 3, 8, 8), channels first (NCHW)"),
    ("samples_path={ambiguous.npz}", "'{ambiguous.npz}' has shape (4, 3, 8, 3), which is ambiguous"),
    ("samples_path={float.npz}", "'{float.npz}' has dtype float32: expected uint8"),
    ("samples_path={five_d.npz}", "'{five_d.npz}' has shape (4, 8, 8, 3, 1): expected (N, H, W, C)"),
    ("samples_path={ok.npz} reference_path={object.npz}", "'{object.npz}' array 'images' cannot be read"),
    ("ckpt_path={run_truncated} metrics=[nll]", "ckpt_path='{run_truncated}' cannot be read as a checkpoint (it is truncated"),
    ("ckpt_path={run_empty} metrics=[nll]", "ckpt_path='{run_empty}' cannot be read as a checkpoint (it is empty)"),
    ("ckpt_path={missing} metrics=[nll]", "ckpt_path='{missing}' is not a checkpoint in <run>/checkpoints/"),
    ("ckpt_path={run_other} metrics=[nll]",
     "ckpt_path='{run_other}' does not fit this model: net.time_mlp.0.weight has shape [16, 32] in the checkpoint but [32, 32]"),
    ("ckpt_path={run_other} metrics=[nll] nll.num_images=0", "nll.num_images=0 is not allowed"),
    ("samples_path={ok.npz} hydra.run.dir={a_file}/run", "hydra.run.dir='{a_file}/run' cannot be used"),
]
CASES = [("train.py", *case) for case in TRAIN_CASES] + [("evaluate.py", *case) for case in EVALUATE_CASES]


def fill(text: str, files: dict) -> str:
    for name, path in files.items():
        text = text.replace(f"{{{name}}}", str(path))
    return text


def arguments(script: str, args: str, files: dict, run_dir, hydra_run_dir: bool = False) -> list[str]:
    """The command line of a case: ``run_dir`` as ``hydra.run.dir`` (``hydra_run_dir``, as a real run
    needs) or else as ``paths.output_dir`` (train) / ``out_dir`` (evaluate), unless the case sets it."""
    base = TINY if script == "train.py" else ["progress=false", "inception_weights=null"]
    args = fill(args, files).split()
    if hydra_run_dir or any(a.startswith("hydra.") for a in args):
        given = any(a.startswith("hydra.run.dir=") for a in args)
        return [*base, *([] if given else [f"hydra.run.dir={run_dir}"]), *args]
    return [*base, f"paths.output_dir={run_dir}" if script == "train.py" else f"out_dir={run_dir}", *args]


ENTRY = {}  # script -> its hydra.main-decorated ``main``


def entry_main(script: str):
    if script not in ENTRY:
        ENTRY[script] = runpy.run_path(str(ROOT / script), run_name=script[:-3] + "_entry")["main"]
    return ENTRY[script]


@pytest.fixture
def in_process(capfd, monkeypatch):
    """Runs ``python <script> args`` in this process; gives (exit code, stderr).

    Arguments that set ``hydra.*`` go through Hydra's whole ``main`` (``sys.argv``, run directory,
    callbacks, logging); the others compose the same config with Hydra's compose API and give it
    to the same decorated ``main`` (Hydra's ``cfg_passthrough``): one composition instead of Hydra's
    two, the rest of the path the same. Leaves logging, environment and Hydra as it found them.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(key, raising=False)  # seed_everything sets them; undone after the test

    def run(script: str, args: list[str]) -> tuple[int, str]:
        capfd.readouterr()
        code = 0
        try:
            if any(a.startswith("hydra.") for a in args):  # as `python script args`, after the imports
                monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
                runpy.run_path(str(ROOT / script), run_name="__main__")
            else:
                with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
                    cfg = compose(script[:-3], overrides=args)
                entry_main(script)(cfg)
        except SystemExit as e:
            code = e.code
        finally:
            GlobalHydra.instance().clear()
            root.handlers[:] = handlers
            root.setLevel(level)
        return code, capfd.readouterr().err

    return run


def lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("script, args, words", CASES, ids=[f"{c[0][:-3]}: {c[1]}" for c in CASES])
def test_bad_input_is_one_line_naming_the_value(script, args, words, files, in_process, tmp_path):
    code, stderr = in_process(script, arguments(script, args, files, tmp_path / "run"))
    found = lines(stderr)
    assert code == 2 and len(found) == 1 and found[0].startswith("error: "), stderr
    assert fill(words, files) in found[0]


REAL = [next(c for c in CASES if "num_workers=2" in c[1]), CASES[-1]]  # a worker's traceback, the run directory


@pytest.fixture(scope="module", autouse=True)
def real_processes(files, tmp_path_factory):
    """``python train.py``/``evaluate.py`` for the ``REAL`` cases, started before the sweep so that they
    run on the second core while it runs on the first; (case, run directory, process) each."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = []
    for script, args, words in REAL:
        run_dir = tmp_path_factory.mktemp("real") / "run"
        argv = arguments(script, args, files, run_dir, hydra_run_dir=True)
        proc = subprocess.Popen([sys.executable, script, *argv], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(((script, args, words), run_dir, proc))
    yield started
    for _, _, proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_the_in_process_sweep_matches_real_processes(files, in_process, real_processes):
    """A DataLoader worker's traceback and an unusable run directory give the same exit code and the
    same one stderr line from a real ``python train.py``/``evaluate.py`` as in this process."""
    for (script, args, words), run_dir, proc in real_processes:
        _, stderr = proc.communicate(timeout=300)
        expected = in_process(script, arguments(script, args, files, run_dir, hydra_run_dir=True))
        assert proc.returncode == expected[0] == 2
        assert lines(stderr) == lines(expected[1]) and len(lines(stderr)) == 1, stderr
        assert fill(words, files) in stderr


# ---- the .npz layout rule -------------------------------------------------------------------------
@pytest.mark.parametrize("shape, accepted", [
    ((5, 8, 8, 3), True), ((5, 8, 8, 1), True), ((5, 32, 16, 3), True), ((5, 8, 8), True),
    ((5, 3, 8, 8), False), ((5, 1, 28, 28), False),  # NCHW: transpose
    ((5, 3, 8, 3), False), ((5, 1, 8, 1), False), ((5, 3, 3, 3), False),  # ambiguous
    ((5, 8, 8, 4), False), ((5, 8, 8, 3, 1), False), ((5, 64), False),  # not images
])
def test_only_unambiguous_nhwc_images_are_accepted(shape, accepted):
    from ddpm.errors import ConfigError
    from ddpm.evaluation.npz import check_images

    images = np.zeros(shape, np.uint8)
    if accepted:
        assert check_images(images).shape == (shape if len(shape) == 4 else (*shape, 1))
    else:
        with pytest.raises(ConfigError, match=rf"has shape \({shape[0]}, "):
            check_images(images)


def test_the_header_check_agrees_with_loading(files):
    from ddpm.errors import ConfigError
    from ddpm.evaluation.npz import check_npz, load_npz

    for name in ("object.npz", "nchw.npz", "ambiguous.npz", "float.npz", "text.npz", "truncated.npz", "single.npz"):
        with pytest.raises(ConfigError) as header:
            check_npz(files[name])
        with pytest.raises(ConfigError) as loading:
            load_npz(files[name])
        assert str(header.value) == str(loading.value)
    check_npz(files["ok.npz"])
    assert load_npz(files["ok.npz"]).shape == (4, 8, 8, 3)


def test_a_worker_traceback_is_cut_to_the_original_message():
    from ddpm.data.images import DataError
    from ddpm.errors import one_line

    wrapped = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 3, in f\n    raise DataError(m)\n'
                        "ddpm.data.images.DataError: cannot decode image 'a: b.png': broken\n")
    assert one_line(wrapped) == "cannot decode image 'a: b.png': broken"
    assert one_line(ValueError("two\nlines")) == "two lines"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_run_directory_without_write_permission_is_named(tmp_path):
    from ddpm.errors import unwritable

    (tmp_path / "locked").mkdir(mode=0o555)
    assert unwritable(tmp_path / "locked" / "run") == f"'{tmp_path / 'locked'}' is not writable (Permission denied)"
    assert unwritable(tmp_path / "free" / "run") is None and not (tmp_path / "free").exists()


def test_a_config_error_behind_hydras_wrapping_is_raised_as_itself_and_other_errors_pass_unchanged():
    from ddpm.errors import ConfigError, unwrapped_config_errors

    with pytest.raises(ConfigError, match=r"^module.kl_weight=-1 is not allowed"):
        with unwrapped_config_errors():
            try:
                raise ConfigError("module.kl_weight=-1 is not allowed: use a number >= 0")
            except ConfigError as e:  # what hydra.utils.instantiate does with a constructor's error
                raise RuntimeError("Error in call to target 'AutoencoderModule'") from e
    with pytest.raises(KeyError, match="not a config error"):
        with unwrapped_config_errors():
            raise KeyError("not a config error")


@pytest.mark.parametrize("arg, new", [
    ("text_encoder=small", "conditioning=text_small"),
    ("model.num_classes=${data.num_classes}", "conditioning=class"),
    ("module=latent", "codec=autoencoder"),
    ("module.autoencoder_ckpt=AE/last.ckpt", "codec.autoencoder_ckpt=AE/last.ckpt"),
    ("module.warmup_steps=5", "lr_schedule.warmup_steps=5"),
    ("model=autoencoder_kl_f4", "autoencoder=kl_f4"),
])
def test_an_option_of_the_old_config_layout_is_one_line_naming_the_new_one(arg, new, capfd):
    from ddpm.runs.resume import resume_argv

    with pytest.raises(SystemExit) as exit_:
        resume_argv(["train.py", "trainer.max_steps=5", arg])
    assert exit_.value.code == 2
    assert lines(capfd.readouterr().err) == [f"error: {arg} is an option of an older config layout: use {new}"]
    assert resume_argv(["train.py", new]) == ["train.py", new]  # today's spelling passes through
