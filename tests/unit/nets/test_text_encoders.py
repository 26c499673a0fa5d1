"""Tests for the text encoders (src/ddpm/nets/text_encoders.py) and conf/text_encoder/*.yaml.

The OpenCLIP tests build the real text towers offline with random weights: ViT-B-32 once (63M
parameters), and for the rest a tiny config (width 64, 2 layers) that open_clip builds the same way.
"""

from __future__ import annotations

import inspect
import math
import socket
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ddpm.errors import ConfigError
from ddpm.nets.text_encoders import OpenCLIPTextEncoder, SmallTextEncoder
from support import runs

CONF = runs.CONF / "text_encoder"
PROMPTS = ["", "7", "a handwritten three", "the digit seven, drawn with thin strokes " * 4]  # the last is truncated


def open_clip_encoder(model_name: str, **kwargs) -> OpenCLIPTextEncoder:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder = OpenCLIPTextEncoder(model_name, **kwargs)
    if kwargs.get("weights") is None:
        assert [str(w.message) for w in caught if "random weights" in str(w.message)], "no random-weights warning"
    return encoder


TINY_CLIP = "ddpm-tests-tiny-clip"  # CLIP's text architecture at width 64 (ViT-B-32's layout, fewer/narrower layers)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> OpenCLIPTextEncoder:
    """A tiny OpenCLIP text tower, registered as an open_clip model config so it is built by open_clip itself."""
    import json

    import open_clip

    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP}.json"
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
    vision_cfg = {"layers": 1, "width": 64, "patch_size": 32}  # never built
    path.write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg}))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip_encoder(TINY_CLIP, max_length=16)


def expected_lengths(tokenizer: str, max_length: int) -> list[int]:
    """Real tokens per prompt, start and end included, counted without the encoder."""
    if tokenizer == "chars":
        body = [len(p.encode("utf-8")) for p in PROMPTS]
    else:
        from open_clip.tokenizer import SimpleTokenizer

        body = [len(SimpleTokenizer().encode(p)) for p in PROMPTS]  # BPE ids, no start/end
    return [min(n + 2, max_length) for n in body]


def assert_prefix_mask(mask: torch.Tensor, lengths: list[int]) -> None:
    """mask (B, L): row b is True exactly on its first lengths[b] positions."""
    positions = torch.arange(mask.shape[1])[None, :]
    assert mask.dtype == torch.bool
    assert torch.equal(mask, positions < torch.tensor(lengths)[:, None])


@pytest.mark.parametrize("tokenizer", ["clip", "chars"])
def test_small_encoder_shapes_and_masks(tokenizer):
    encoder = SmallTextEncoder(dim=32, depth=1, num_heads=4, max_length=12, tokenizer=tokenizer)
    emb, mask = encoder(PROMPTS)
    assert emb.shape == (4, 12, 32) and emb.dtype == torch.float32
    assert_prefix_mask(mask, expected_lengths(tokenizer, 12))  # "" keeps its start and end tokens
    assert mask[0].sum() == 2 and mask[3].all()
    assert not emb[~mask].any() and emb[mask].abs().sum(-1).gt(0).all()  # padding rows zero, real rows not
    assert (encoder.dim, encoder.max_length, encoder.trainable) == (32, 12, True)


def reference_encoder(encoder: SmallTextEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pre-LN Transformer encoder (Xiong et al. 2020) written out in float64: ids (B, L) -> (B, L, D)."""
    p = {k: v.double() for k, v in encoder.state_dict().items()}
    D, h = encoder.dim, encoder.encoder.layers[0].self_attn.num_heads

    def ln(x, pre):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * p[pre + ".weight"] + p[pre + ".bias"]

    x = p["token_embed.weight"][ids] + p["pos_embed"][: ids.shape[1]]  # (B, L, D)
    B, L, _ = x.shape
    for i in range(len(encoder.encoder.layers)):
        pre = f"encoder.layers.{i}."
        qkv = ln(x, pre + "norm1") @ p[pre + "self_attn.in_proj_weight"].T + p[pre + "self_attn.in_proj_bias"]
        q, k, v = (t.reshape(B, L, h, D // h).transpose(1, 2) for t in qkv.split(D, -1))  # (B, h, L, D/h)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // h)  # (B, h, L, L)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))  # padding keys ignored
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        x = x + att @ p[pre + "self_attn.out_proj.weight"].T + p[pre + "self_attn.out_proj.bias"]
        hid = ln(x, pre + "norm2") @ p[pre + "linear1.weight"].T + p[pre + "linear1.bias"]
        hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
        x = x + hid @ p[pre + "linear2.weight"].T + p[pre + "linear2.bias"]
    return ln(x, "norm") * mask[..., None]


def test_small_encoder_matches_a_float64_transformer_and_ignores_padding():
    torch.manual_seed(0)
    encoder = SmallTextEncoder(dim=32, depth=2, num_heads=4, max_length=16, tokenizer="chars")
    emb, mask = encoder(PROMPTS)
    ids, _ = encoder.tokenizer(PROMPTS)
    torch.testing.assert_close(emb.double(), reference_encoder(encoder, ids, mask), atol=1e-5, rtol=1e-5)
    # padding independence: other ids in the padding, or the prompt batched alone, change no real token
    noisy = torch.where(mask, ids, torch.randint(0, 256, ids.shape))
    torch.testing.assert_close(encoder.encode_tokens(noisy, mask), emb)
    alone, alone_mask = encoder(PROMPTS[2:3])
    assert torch.equal(alone_mask, mask[2:3])
    torch.testing.assert_close(alone, emb[2:3], atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # eval mode without gradients (PyTorch's fused encoder path): the same embeddings
        torch.testing.assert_close(encoder.eval()(PROMPTS)[0], emb, atol=1e-5, rtol=1e-5)


def test_small_encoder_gradients_reach_its_parameters():
    encoder = SmallTextEncoder(dim=32, depth=2, num_heads=4, max_length=12, tokenizer="clip")
    emb, mask = encoder(PROMPTS)
    (emb * torch.randn_like(emb)).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    used = torch.zeros(encoder.token_embed.num_embeddings, dtype=torch.bool)
    used[encoder.tokenizer(PROMPTS)[0][mask]] = True  # only the real tokens' rows are trained
    assert torch.equal(encoder.token_embed.weight.grad.abs().sum(-1) > 0, used)


@pytest.mark.parametrize(
    "kwargs, named",
    [({"tokenizer": "words"}, "tokenizer='words'"), ({"dim": 30}, "dim=30"), ({"max_length": 1}, "max_length=1")],
)
def test_small_encoder_bad_arguments_are_one_line(kwargs, named):
    with pytest.raises(ConfigError) as err:
        SmallTextEncoder(**kwargs)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_bad_prompts_are_one_line():
    encoder = SmallTextEncoder(tokenizer="chars")
    for prompts in ("a string", [], [3]):
        with pytest.raises(ConfigError, match="prompts=") as err:
            encoder(prompts)
        assert "\n" not in str(err.value)


def test_the_clip_tokenizer_needs_no_network(monkeypatch):
    import open_clip

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert (Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").is_file()  # shipped in the package
    encoder = SmallTextEncoder(dim=8, depth=1, num_heads=2, max_length=8, tokenizer="clip")
    assert encoder.token_embed.num_embeddings == 49408  # CLIP's BPE vocabulary
    ids, mask = encoder.tokenizer(["a handwritten three"])
    assert ids[0, 0] == 49406 and ids[0, mask[0].sum() - 1] == 49407  # start and end tokens


def test_openclip_vit_b_32_text_tower_is_real_frozen_and_outside_its_holder():
    encoder = open_clip_encoder("ViT-B-32", max_length=77)
    tower = encoder.tower
    assert (encoder.dim, encoder.max_length, encoder.trainable) == (512, 77, False)
    width, layers, vocab = 512, 12, 49408  # ViT-B-32's text_cfg; parameters counted from the layer shapes
    ln, attn, mlp = 2 * width, (3 * width * width + 3 * width) + (width * width + width), 2 * 4 * width * width + 5 * width
    per_layer = 2 * ln + attn + mlp
    expected = vocab * width + 77 * width + layers * per_layer + ln + width * 512  # + ln_final + text_projection
    assert sum(p.numel() for p in tower.parameters()) == expected
    assert not any(p.requires_grad for p in tower.parameters())
    holder = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(2, 2)})
    assert len(list(holder.parameters())) == 2 and set(holder.state_dict()) == {"head.weight", "head.bias"}
    holder.train()
    assert not encoder.training and not tower.training
    emb, mask = encoder(["", "a handwritten three"])
    assert emb.shape == (2, 77, 512) and emb.dtype == torch.float32 and not emb.requires_grad
    assert_prefix_mask(mask, [2, 5])
    assert emb[mask].std() > 0.5 and not emb[~mask].any()  # ln_final of the real tokens; zeros at padding


def test_openclip_real_tokens_do_not_depend_on_the_padding(tiny_clip):
    emb, mask = tiny_clip(PROMPTS)
    assert emb.shape == (4, 16, 64)
    assert_prefix_mask(mask, expected_lengths("clip", 16))
    from open_clip.tokenizer import SimpleTokenizer

    tiny_clip.tower.output_tokens = True  # the tower's own forward on the full context of 77: ln_final(last states)
    with torch.no_grad():
        _, full = tiny_clip.tower(SimpleTokenizer(context_length=77)(PROMPTS[2:3]))  # (1, 77, 64)
    n = int(mask[2].sum())
    torch.testing.assert_close(full[0, :n], emb[2, :n], atol=1e-5, rtol=1e-5)


def test_openclip_to_moves_and_casts_the_hidden_tower(tiny_clip):
    tiny_clip.to(torch.float64)
    try:
        assert tiny_clip.tower.positional_embedding.dtype == torch.float64
        emb, _ = tiny_clip(["7"])
        assert emb.dtype == torch.float32
        if torch.cuda.is_available():
            tiny_clip.to("cuda")
            assert tiny_clip.tower.positional_embedding.is_cuda and tiny_clip(["7"])[1].is_cuda
    finally:
        tiny_clip.to("cpu", torch.float32)
    assert tiny_clip.tower.positional_embedding.dtype == torch.float32


def test_openclip_loads_a_saved_state_dict(tiny_clip, tmp_path):
    tower_state = tiny_clip.tower.state_dict()
    full = {**tower_state, "visual.conv1.weight": torch.zeros(2), "logit_scale": torch.zeros(())}  # a full CLIP's keys
    torch.save({"state_dict": full}, tmp_path / "clip.pt")
    torch.manual_seed(1)  # the new encoder draws other random weights, then loads the saved ones
    loaded = open_clip_encoder(TINY_CLIP, weights=str(tmp_path / "clip.pt"), max_length=16)
    emb, mask = loaded(PROMPTS)
    ref, ref_mask = tiny_clip(PROMPTS)
    assert torch.equal(mask, ref_mask) and torch.equal(emb, ref)
    assert loaded.state_dict() == {} and not any(p.requires_grad for p in loaded.tower.parameters())


def test_openclip_bad_weights_are_one_line(tiny_clip, tmp_path):
    state = dict(tiny_clip.tower.state_dict())
    missing = {k: v for k, v in state.items() if k != "ln_final.weight"}
    reshaped = {**state, "positional_embedding": torch.zeros(76, 64)}
    cases = [
        (tmp_path / "nope.pt", ["nope.pt", "does not exist"]),
        (missing, [TINY_CLIP, "missing key 'ln_final.weight'"]),
        (reshaped, [TINY_CLIP, "'positional_embedding' has shape (76, 64), expected (77, 64)"]),
    ]
    for i, (case, words) in enumerate(cases):
        if isinstance(case, dict):
            torch.save(case, tmp_path / f"w{i}.pt")
            case = tmp_path / f"w{i}.pt"
        with pytest.raises(ConfigError) as err:
            OpenCLIPTextEncoder(TINY_CLIP, weights=str(case), max_length=16)
        message = str(err.value)
        assert "\n" not in message and str(case) in message and all(w in message for w in words), message


def test_openclip_bad_model_name_and_max_length_are_one_line(tiny_clip):
    for kwargs, named in (({"model_name": "ViT-Nope"}, "model_name='ViT-Nope'"), ({"max_length": 78}, "max_length=78")):
        with pytest.raises(ConfigError, match=r"^[^\n]+$") as err:
            OpenCLIPTextEncoder(**{"model_name": TINY_CLIP, **kwargs})
        assert named in str(err.value)


def test_text_encoder_configs_fit_their_constructors(monkeypatch, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for name, cls in (("small", SmallTextEncoder), ("clip", OpenCLIPTextEncoder)):
        conf = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert conf.pop("_target_") == f"{cls.__module__}.{cls.__name__}"
        assert set(conf) <= set(inspect.signature(cls).parameters), name
    monkeypatch.setenv("DDPM_CLIP_WEIGHTS", str(tmp_path / "w.pt"))
    assert OmegaConf.load(CONF / "clip.yaml").weights == str(tmp_path / "w.pt")
    monkeypatch.delenv("DDPM_CLIP_WEIGHTS")
    assert OmegaConf.load(CONF / "clip.yaml").weights is None
    small = instantiate(OmegaConf.load(CONF / "small.yaml"))
    assert isinstance(small, SmallTextEncoder) and small.dim == 64 and small.trainable
