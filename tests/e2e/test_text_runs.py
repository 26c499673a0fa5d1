"""Text-to-image runs through the real entry points: experiment=digits_text trains (small encoder,
template captions), checkpoints, resumes, draws its grid one row per prompt and samples prompts in
evaluate.py; a run on precomputed embeddings (no encoder) trains and keeps the empty prompt."""

import json
import re

import numpy as np
import pytest
import torch

from support.runs import CONF, TINY, compose_train
from ddpm.evaluation import classifier as C
from support.classifier import SMALL, datamodule
from ddpm.data.captions import write_embeddings
from ddpm.data.images import digits

SMALL_TEXT = ["experiment=digits_text", "conditioning.encoder.dim=16", "conditioning.encoder.depth=1", "conditioning.encoder.max_length=8",
              "callbacks.sample_grid.per_class=1", "sampler.steps=3"]


def test_digits_text_trains_resumes_and_samples_prompts(tmp_path, capsys):
    from ddpm.runs.train import train

    run = tmp_path / "run"
    train(compose_train(*TINY, *SMALL_TEXT, "trainer.max_steps=2", tmp_path=run))  # in this process (the CLI: test_train)
    train(compose_train(*TINY, *SMALL_TEXT, "trainer.max_steps=4", "ckpt_path=auto", tmp_path=run))  # resumed in place
    assert "(step 2), its newest complete checkpoint" in capsys.readouterr().out  # a resume, not a fresh start
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("conditioning.encoder.") for k in keys) and any(k.startswith("conditioning.ema.") for k in keys)
    assert (run / "samples" / "step_0000004.png").exists()  # one row per class prompt
    from hydra import compose, initialize_config_dir

    from ddpm.runs.evaluate import evaluate

    with pytest.MonkeyPatch.context() as mp:  # the digits classifier of test_classifier_metrics' small recipe
        mp.setitem(C.RECIPES, "digits", SMALL)
        C.load_or_train(datamodule(), tmp_path / "cls")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            f"ckpt_path={run}/checkpoints/last.ckpt", "prompts=[a handwritten three]", "prompt_labels=[3]",
            "metrics=[accuracy]", "num_samples=4", "batch_size=4", "sampler=ddim", "sampler.steps=3",
            f"out_dir={tmp_path / 'eval'}", "progress=false", f"classifier_cache_dir={tmp_path / 'cls'}"])
    result = evaluate(cfg)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == result
    assert result["prompts"] == ["a handwritten three"] and result["num_samples"] == 4
    assert 0.0 <= result["accuracy"] <= 1.0 and result["label_counts"][3] == 4


class ByteEncoder:
    """Stand-in for an encoder run elsewhere (CLIP on another machine): bytes as one-hot-ish vectors."""

    dim = 12

    def __call__(self, prompts):
        emb = torch.zeros(len(prompts), 10, self.dim)
        mask = torch.zeros(len(prompts), 10, dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids = [0, *p.encode()[:9]]
            for j, b in enumerate(ids):
                emb[i, j, b % self.dim], mask[i, j] = 1.0, True
        return emb, mask


def test_a_run_on_precomputed_embeddings_needs_no_encoder(tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    captions = [f"a handwritten {names[int(y)]}" for _, y in digits()]
    write_embeddings(tmp_path / "emb.npz", ByteEncoder(), captions)
    from ddpm.runs.train import train

    run = tmp_path / "run"
    train(compose_train(*TINY, "model=dit_tiny", "data.captions=embeddings", f"data.embeddings_path={tmp_path / 'emb.npz'}",
                        "conditioning=text_embeddings", "conditioning.context_dim=12", "trainer.max_steps=2", "callbacks.sample_grid.num_samples=2", tmp_path=run))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    null = ByteEncoder()([""])
    assert torch.equal(ckpt["null_prompt"]["embeddings"], null[0]) and torch.equal(ckpt["null_prompt"]["mask"], null[1])
    assert not any(k.startswith("conditioning.") for k in ckpt["state_dict"])  # no encoder to store
    assert (run / "samples" / "step_0000002.png").exists()  # the empty prompt's samples


@pytest.mark.parametrize("overrides, message", [
    (["experiment=digits_cfg", "conditioning=text_small", "model.num_classes=10"],
     "model.num_classes=10 but conditioning=TextConditioning gives the net num_classes=None"),
    (["model=mlp", "data=moons", "conditioning=text_small"],
     "conditioning=TextConditioning needs a network that takes it (model.context_dim)"),
    (["model=unet_tiny", "conditioning=none", "model.num_classes=10"],
     "model.num_classes=10 but conditioning=Unconditional gives the net num_classes=None"),
])
def test_a_condition_the_model_cannot_take_is_one_line(overrides, message, tmp_path):
    from ddpm.errors import ConfigError
    from ddpm.runs.build import build_module

    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        build_module(compose_train(*overrides, tmp_path=tmp_path))
    assert "\n" not in str(err.value)
