"""Files a user names cannot run code: checkpoints (evaluation and resume), a run's config.yaml and the
Inception weights. Each payload here would create a marker file if it ran; each test first shows that
it does run where nothing guards it, then that it is refused with one line and the marker is absent."""

import pathlib
import re
import shutil

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from support.runs import CONF, DATA, TINY, run_here
from ddpm.errors import ConfigError
from ddpm.evaluation.inception import InceptionFeatures, load_inception_state_dict
from ddpm.runs.allowlist import ALLOWED_PACKAGES, checked_config, target_refusal
from ddpm.runs.load import load_run
from ddpm.training.checkpoints import read_checkpoint

LEGACY_RUN = DATA / "legacy_run"  # a clean run: config.yaml + checkpoints/last.ckpt


class Payload:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: the marker file appears."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def payload_checkpoint(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A checkpoint with real weights and one crafted object among them, checked to be live: torch.load without
    weights_only runs it (so a missing marker in a test means it was refused, not that it was harmless)."""
    clean = torch.load(LEGACY_RUN / "checkpoints" / "last.ckpt", weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**clean, "hyper_parameters": {"note": Payload(marker)}}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the crafted checkpoint no longer runs its payload: the refusal tests would prove nothing"
    marker.unlink()
    return path


def clean_run(tmp_path: pathlib.Path) -> pathlib.Path:
    run_dir = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run_dir)
    return run_dir


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_crafted_checkpoint_is_refused_by_load_run_with_one_line(tmp_path):
    run_dir, marker = clean_run(tmp_path), tmp_path / "marker"
    ckpt = payload_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(ConfigError, match=f"ckpt_path='{ckpt}' cannot be read as a checkpoint") as err:
        load_run(ckpt)
    assert "\n" not in str(err.value) and not marker.exists()
    assert "it holds getattr, not only tensors and plain containers" in str(err.value)  # the pickled Path.touch


def test_read_checkpoint_gives_the_checkpoint_or_one_line(tmp_path):
    marker = tmp_path / "marker"
    clean = read_checkpoint(LEGACY_RUN / "checkpoints" / "last.ckpt")
    expected = torch.load(LEGACY_RUN / "checkpoints" / "last.ckpt", weights_only=False)
    assert clean.keys() == expected.keys()
    assert all(torch.equal(clean["state_dict"][k], v) for k, v in expected["state_dict"].items())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "no_state.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    bad = [payload_checkpoint(tmp_path / "p.ckpt", marker), tmp_path / "no_state.ckpt", tmp_path / "text.ckpt"]
    for path in bad:
        with pytest.raises(ConfigError, match=f"ckpt_path='{path}' cannot be read as a checkpoint") as err:
            read_checkpoint(path)
        assert "\n" not in str(err.value)
    assert not marker.exists()


# The entry points run in this process (conftest.run_here: runpy with sys.argv, as `python evaluate.py ...`
# after its imports; tests/test_bad_input.py checks exit code and stderr against real processes).
def test_a_crafted_checkpoint_is_one_line_from_evaluate_py(tmp_path, monkeypatch, capfd):
    run_dir, marker = clean_run(tmp_path), tmp_path / "marker"
    ckpt = payload_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    code, _, err = run_here("evaluate.py", f"ckpt_path={ckpt}", "metrics=[nll]", f"hydra.run.dir={tmp_path}/h",
                            monkeypatch=monkeypatch, capfd=capfd)
    assert code == 2
    assert one_line(err).startswith(f"error: ckpt_path='{ckpt}' cannot be read as a checkpoint")
    assert not marker.exists()


def test_resuming_from_a_crafted_checkpoint_runs_nothing_and_is_one_line(tmp_path, monkeypatch, capfd):
    marker = tmp_path / "marker"
    ckpt = payload_checkpoint(tmp_path / "evil" / "last.ckpt", marker)
    code, _, err = run_here("train.py", *TINY, f"hydra.run.dir={tmp_path / 'out'}", f"ckpt_path={ckpt}",
                            "trainer.max_steps=2", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 2 and not marker.exists() and "Traceback" not in err
    # the last line: Lightning's start-up lines ("Seed set to 0", "GPU available") may precede it
    assert err.strip().splitlines()[-1].startswith(f"error: ckpt_path='{ckpt}' cannot be read as a checkpoint")


# (where in config.yaml, the node put there): each would touch the marker, or load a file that does
LIVE = (0, 4, 5)  # the touch and torch.load cases run when instantiated unchecked (Hydra's own block-list stops exec and
#                   os.system, not these): checked where they are used


def crafted_nodes(marker: pathlib.Path, payload: pathlib.Path) -> list:
    return [
        ("model", {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}),
        ("model", {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]}),
        ("model", {"_target_": "ddpm.errors.functools.partial", "_args_": []}),  # re-exported by a ddpm module
        ("model", {"_target_": "torch.os.system", "_args_": [f"touch {marker}"]}),
        ("schedule", {"_target_": "torch.load", "f": str(payload), "weights_only": False}),
        ("data.dataset", {"_target_": "torch.serialization.load", "f": str(payload), "weights_only": False}),
        ("loss", {"_target_": "lightning.pytorch.cli.instantiate_class", "args": [],
                  "init": {"class_path": "pathlib.Path.touch"}}),
        ("sampler", {"_target_": "ddpm.training.module.DiffusionModule.load_from_checkpoint",
                     "checkpoint_path": str(payload), "weights_only": False}),
        ("module.extra[1]", {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}),  # inside a list
    ]


def put(cfg, where: str, node) -> str:
    """Set ``where`` (``a.b`` or ``a.b[i]``) of ``cfg`` to ``node``; the key path of its ``_target_``."""
    if where.endswith("]"):
        key = where.split("[")[0]
        OmegaConf.update(cfg, key, [{"lr": 1}, node], force_add=True)
    else:
        OmegaConf.update(cfg, where, node, merge=False, force_add=True)
    return f"{where}._target_"


@pytest.mark.parametrize("case", range(9))
def test_a_config_naming_a_forbidden_target_is_refused_before_anything_is_built(tmp_path, case):
    run_dir, marker = clean_run(tmp_path), tmp_path / "marker"
    payload = payload_checkpoint(tmp_path / "payload.pt", marker)
    where, node = crafted_nodes(marker, payload)[case]
    if case in LIVE:
        instantiate(OmegaConf.create(node))
        assert marker.exists(), f"{node['_target_']} no longer runs when instantiated: this case proves nothing"
        marker.unlink()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    key_path = put(cfg, where, node)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    with pytest.raises(ConfigError) as err:
        load_run(run_dir / "checkpoints" / "last.ckpt")
    message = str(err.value)
    assert "\n" not in message and f"{key_path}={node['_target_']!r} is not allowed" in message
    assert str(run_dir / "config.yaml") in message
    assert not marker.exists()


def test_an_interpolated_target_is_checked_as_resolved(tmp_path):
    run_dir, marker = clean_run(tmp_path), tmp_path / "marker"
    text = (run_dir / "config.yaml").read_text()
    text += f"evil: pathlib.Path.touch\nmodel_extra:\n  _target_: ${{evil}}\n  _args_: ['{marker}']\n"
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"model_extra\._target_='pathlib\.Path\.touch' is not allowed"):
        load_run(run_dir / "checkpoints" / "last.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("text, words", [
    ("- a list\n", "is not a run config: it holds a ListConfig"),
    ("data: 5\nloss: {}\n", "is not a run config: "),
    ("model: [unclosed\n", "cannot be read as a run config (ParserError"),
])
def test_a_config_yaml_that_is_no_run_config_is_one_line(tmp_path, text, words):
    run_dir = clean_run(tmp_path)
    (run_dir / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"'{run_dir / 'config.yaml'}' {words}")) as err:
        load_run(run_dir / "checkpoints" / "last.ckpt")
    assert "\n" not in str(err.value)


def test_a_forbidden_target_is_one_line_from_evaluate_py(tmp_path, monkeypatch, capfd):
    run_dir, marker = clean_run(tmp_path), tmp_path / "marker"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.model = {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}
    OmegaConf.save(cfg, run_dir / "config.yaml")
    code, _, err = run_here("evaluate.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt", "metrics=[nll]",
                            f"hydra.run.dir={tmp_path}/h", monkeypatch=monkeypatch, capfd=capfd)
    assert code == 2 and not marker.exists()
    assert "model._target_='pathlib.Path.touch' is not allowed" in one_line(err)


def test_every_target_the_project_configs_name_is_allowed():
    targets = set()
    for path in CONF.rglob("*.yaml"):
        if path.relative_to(CONF).parts[0] == "hydra":
            continue  # Hydra's own settings (the launcher): never part of a run's config.yaml
        for line in path.read_text().splitlines():
            if line.strip().startswith("_target_:"):
                targets.add(line.split(":", 1)[1].split("#")[0].strip())
    assert len(targets) > 20 and all(t.split(".")[0] in ALLOWED_PACKAGES for t in targets)
    assert {t: target_refusal(t) for t in targets if target_refusal(t)} == {}


def test_checked_config_returns_the_resolved_config():
    cfg = OmegaConf.create({"a": {"_target_": "torch.optim.Adam", "lr": "${lr}"}, "lr": 0.5})
    assert OmegaConf.to_container(checked_config(cfg, "x")) == {"a": {"_target_": "torch.optim.Adam", "lr": 0.5}, "lr": 0.5}
    with pytest.raises(ConfigError, match=r"x: cannot resolve its interpolations"):
        checked_config(OmegaConf.create({"a": "${missing}"}), "x")


def payload_weights(tmp_path, marker):
    """An Inception weights file: a state dict of tensors with one crafted object among them, checked to be live:
    torch-fidelity alone would run it (it unpickles first, then finds the tensors wrong)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.save({"fc.weight": torch.zeros(2), "fc.bias": Payload(marker)}, tmp_path / "weights.pth")
    with pytest.raises(RuntimeError):
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "weights.pth"))
    assert marker.exists(), "torch-fidelity no longer runs a crafted weights file: the refusal tests would prove nothing"
    marker.unlink()
    return tmp_path / "weights.pth"


def test_inception_weights_must_be_a_state_dict_of_tensors(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"fc.weight": torch.zeros(2), "step": 3}, tmp_path / "mixed.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    torch.save({}, tmp_path / "empty.pth")
    cases = {payload_weights(tmp_path, marker): "cannot be read as a state dict",
             tmp_path / "mixed.pth": "is not a state dict of tensors (found 'step')",
             tmp_path / "list.pth": "is not a state dict of tensors (found 'list')",
             tmp_path / "empty.pth": "is not a state dict of tensors"}
    for path, words in cases.items():
        for load in (load_inception_state_dict, InceptionFeatures):
            with pytest.raises(ConfigError, match=re.escape(f"inception_weights='{path}' {words}")) as err:
                load(path)
            assert "\n" not in str(err.value)
    assert not marker.exists()
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="is not the Inception-v3 of torch-fidelity's") as err:
        InceptionFeatures(tmp_path / "partial.pth")  # tensors, but not the network's
    assert "\n" not in str(err.value)


def test_a_crafted_inception_file_is_one_line_from_evaluate_py(tmp_path, monkeypatch, capfd):
    marker = tmp_path / "marker"
    weights = payload_weights(tmp_path, marker)
    np.savez(tmp_path / "s.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    code, _, err = run_here("evaluate.py", f"samples_path={tmp_path}/s.npz", f"inception_weights={weights}",
                            f"reference_path={tmp_path}/s.npz", f"hydra.run.dir={tmp_path}/h",
                            monkeypatch=monkeypatch, capfd=capfd)
    assert code == 2 and not marker.exists()
    assert one_line(err).startswith(f"error: inception_weights='{weights}' cannot be read as a state dict")


def test_the_real_inception_weights_give_the_same_network_as_torch_fidelity_loading_them():
    from support.shared_data import INCEPTION_WEIGHTS, require
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = require(INCEPTION_WEIGHTS) / INCEPTION_WEIGHTS
    ours = InceptionFeatures(path).net.state_dict()
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():  # a pool3-only file has a NaN classifier: NaN equals NaN here
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, equal_nan=True)
