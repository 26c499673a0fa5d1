"""Text encoders: prompts (list[str]) -> token embeddings (B, L, dim) and a mask (B, L) for cross-attention.

Every encoder is an ``nn.Module`` with

    forward(prompts: list[str]) -> (embeddings (B, L, dim) float32, mask (B, L) bool)

``mask`` is True for the real tokens, start and end tokens included, so the empty prompt "" has a
non-empty mask (its start and end tokens) and serves as the null condition of classifier-free
guidance. ``L`` is always ``max_length`` (every batch has the same shape, so prompts and the null
prompt can be stacked); embeddings at padding positions carry no information. Attributes:
``dim`` (the embedding width, a net's ``context_dim``), ``max_length`` and ``trainable`` (True: the
encoder is trained jointly with the diffusion net and saved with it; False: frozen, kept out of the
optimizer and out of checkpoints).

- ``SmallTextEncoder``: a small Transformer encoder (Vaswani et al. 2017, pre-LN as in Xiong et al.
  2020) trained from scratch, on the OpenCLIP BPE tokenizer (its vocabulary ships in the
  ``open_clip`` package) or on UTF-8 bytes; nothing is downloaded.
- ``OpenCLIPTextEncoder``: the frozen text tower of an OpenCLIP model (Radford et al. 2021, "Learning
  Transferable Visual Models From Natural Language Supervision"; Cherti et al. 2023). As in Stable
  Diffusion (Rombach et al. 2022), the condition is the per-token last hidden states after
  ``ln_final``. Weights come from a local checkpoint, or are random (tests, offline).

``open_clip`` takes seconds to import, so it is imported only when an encoder needs it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.errors import ConfigError, check_choice

TOKENIZERS = ("clip", "chars")


def _clip_tokenizer(context_length: int):
    """OpenCLIP's byte-pair tokenizer (the CLIP vocabulary, 49408 ids; start 49406, end 49407 = the largest id)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _check_prompts(prompts) -> None:
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"prompts={prompts!r} is not allowed: give a list of strings")
    if not prompts:
        raise ConfigError('prompts=[] is not allowed: give at least one prompt ("" is the empty prompt)')


def _mask_up_to_eot(ids: Tensor) -> Tensor:
    """CLIP tokens (B, L) -> mask (B, L): True up to and including the end token, the largest id of each row."""
    eot = ids.argmax(dim=-1, keepdim=True)  # (B, 1)
    return torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot  # (B, L)


class _Tokenizer:
    """Prompts -> (ids (B, L) int64, mask (B, L) bool) on the CPU, with a cache of the prompts seen."""

    CHAR_START, CHAR_END, CHAR_PAD = 256, 257, 258  # after the 256 byte values

    def __init__(self, kind: str, max_length: int) -> None:
        self.kind, self.max_length = kind, max_length
        self._clip = _clip_tokenizer(max_length) if kind == "clip" else None
        self.vocab_size = self._clip.vocab_size if self._clip is not None else self.CHAR_PAD + 1
        self._cache: dict[str, Tensor] = {}

    def _row(self, prompt: str) -> Tensor:
        row = self._cache.get(prompt)
        if row is None:
            if self._clip is not None:
                row = self._clip([prompt])[0]  # (L,), truncated with the end token kept last
            else:
                body = list(prompt.encode("utf-8")[: self.max_length - 2])
                ids = [self.CHAR_START, *body, self.CHAR_END]
                row = torch.tensor(ids + [self.CHAR_PAD] * (self.max_length - len(ids)))
            if len(self._cache) >= 100_000:  # captions are usually few templates; bound the memory anyway
                self._cache.clear()
            self._cache[prompt] = row
        return row

    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        _check_prompts(prompts)
        ids = torch.stack([self._row(p) for p in prompts])  # (B, L)
        mask = _mask_up_to_eot(ids) if self._clip is not None else ids != self.CHAR_PAD  # (B, L)
        return ids, mask


class SmallTextEncoder(nn.Module):
    """A small Transformer text encoder trained jointly with the diffusion net (``trainable = True``).

    tokens -> learned token embedding + learned position embedding -> ``depth`` pre-LN Transformer
    encoder layers (bidirectional, padding masked out of the keys) -> LayerNorm; padding rows are zeroed.
    Positions past a batch's longest prompt are not computed (they are padding in every row).

    Args:
        dim: embedding width (the nets' ``context_dim``).
        depth: Transformer layers.
        num_heads: attention heads; must divide ``dim``.
        max_length: tokens per prompt, start and end tokens included (longer prompts are truncated).
        tokenizer: "clip": OpenCLIP's BPE tokenizer (49408-entry table); "chars": UTF-8 bytes + start/end/pad.
        dropout: dropout inside the Transformer layers.
    """

    trainable = True

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_length: int = 32,
        tokenizer: str = "clip",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("conditioning.encoder.tokenizer", tokenizer, TOKENIZERS)
        sizes = (("dim", dim, 1), ("depth", depth, 1), ("num_heads", num_heads, 1), ("max_length", max_length, 2))
        for name, value, low in sizes:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"conditioning.encoder.{name}={value!r} is not allowed: use an integer >= {low}")
        if dim % num_heads:
            raise ConfigError(f"conditioning.encoder.dim={dim} is not divisible by num_heads={num_heads}: use a multiple of it")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"conditioning.encoder.dropout={dropout} is not allowed: use a probability in [0, 1)")
        self.dim, self.max_length = dim, max_length
        self.tokenizer = _Tokenizer(tokenizer, max_length)
        self.token_embed = nn.Embedding(self.tokenizer.vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.empty(max_length, dim))
        nn.init.normal_(self.token_embed.weight, std=0.02)  # as CLIP's text tower
        nn.init.normal_(self.pos_embed, std=0.01)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,  # pre-LN (Xiong et al. 2020)
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def encode_tokens(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids (B, L) and mask (B, L) bool -> embeddings (B, L, dim) float32, zero at padding."""
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]  # (B, L, dim)
        x = self.encoder(x, src_key_padding_mask=~mask)  # (B, L, dim); True in the padding mask = ignore
        return (self.norm(x) * mask[..., None]).float()  # (B, L, dim)

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer(prompts)  # (B, L) on the CPU
        n = int(mask.sum(1).max())  # the longest prompt: later positions are padding in every row
        device = self.pos_embed.device
        ids, mask = ids.to(device), mask.to(device)  # (B, L)
        emb = self.encode_tokens(ids[:, :n], mask[:, :n])  # (B, n, dim): padding is masked, so cut it
        return F.pad(emb, (0, 0, 0, self.max_length - n)), mask  # (B, L, dim), zeros at padding


class OpenCLIPTextEncoder(nn.Module):
    """The frozen text tower of an OpenCLIP model: prompts -> last hidden states (B, max_length, width).

    The tower is held outside ``nn.Module``'s registries, so it is in neither ``parameters()`` nor
    ``state_dict()`` of this encoder or of any module holding it (no optimizer state, no checkpoint
    bytes); ``_apply`` still moves and casts it with ``.to()``/``.float()``. It always runs in eval
    mode under ``torch.no_grad()``.

    Args:
        model_name: an OpenCLIP model config (``open_clip.list_models()``) with the CLIP text
            Transformer and BPE tokenizer, e.g. "ViT-B-32" (width 512) or "ViT-L-14" (768).
            OpenAI's CLIP weights need the "-quickgelu" variant of the name.
        weights: path to an OpenCLIP checkpoint (.pt/.bin/.safetensors: a state dict of the full
            CLIP model or of its text tower); None: random weights (tests; the prompts then carry
            no meaning).
        max_length: tokens per prompt, at most the model's context length (77). The tower's
            attention is causal, so a real token's state does not depend on how much padding follows:
            only the positions up to a batch's longest prompt are computed; padding embeddings are zeros.
    """

    trainable = False

    def __init__(self, model_name: str = "ViT-B-32", weights: str | None = None, max_length: int = 77) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ConfigError(
                f"conditioning.encoder.model_name={model_name!r} is not an OpenCLIP model config: "
                f"use one of open_clip.list_models(), e.g. 'ViT-B-32'"
            )
        text_cfg = dict(cfg.get("text_cfg", {}))
        if text_cfg.get("hf_model_name") or "hf_tokenizer_name" in text_cfg:
            raise ConfigError(
                f"conditioning.encoder.model_name={model_name!r} uses a Hugging Face text model or tokenizer, which "
                f"needs a download: use a CLIP text Transformer config, e.g. 'ViT-B-32' or 'ViT-L-14'"
            )
        tower = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
        if getattr(tower, "cls_emb", None) is not None or getattr(tower, "attn_mask", None) is None:
            raise ConfigError(
                f"conditioning.encoder.model_name={model_name!r} has no causal CLIP text Transformer: "
                f"use e.g. 'ViT-B-32' or 'ViT-L-14'"
            )
        context = tower.context_length
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= context:
            raise ConfigError(
                f"conditioning.encoder.max_length={max_length!r} is not allowed for {model_name}: use 2..{context}"
            )
        self.model_name, self.max_length, self.dim = model_name, max_length, tower.width
        if weights is None:
            warnings.warn(
                f"OpenCLIPTextEncoder({model_name}): no weights given (conditioning.encoder.weights), "
                f"the text tower has random weights",
                stacklevel=2,
            )
        else:
            _load_text_tower(tower, model_name, weights)
        tower.requires_grad_(False)
        tower.eval()
        object.__setattr__(self, "_tower", tower)  # not registered: out of parameters() and state_dict()
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=max_length)

    def _apply(self, fn, recurse: bool = True):  # .to(device), .float(), .cuda() ... reach the hidden tower too
        super()._apply(fn, recurse)
        self._tower._apply(fn)
        return self

    def train(self, mode: bool = True) -> "OpenCLIPTextEncoder":  # frozen: always in eval mode
        return super().train(False)

    @property
    def tower(self) -> nn.Module:
        """The OpenCLIP ``TextTransformer`` (frozen, unregistered)."""
        return self._tower

    @torch.no_grad()
    def encode_tokens(self, ids: Tensor) -> Tensor:
        """CLIP token ids (B, L), L <= context length -> ln_final(last hidden states) (B, L, width) float32."""
        tower, L = self._tower, ids.shape[1]
        x = tower.token_embedding(ids) + tower.positional_embedding[:L]  # (B, L, width)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:L, :L])  # causal, (B, L, width)
        return tower.ln_final(x).float()  # (B, L, width)

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        _check_prompts(prompts)
        ids = self.tokenizer(list(prompts))  # (B, L) on the CPU; the end token is the largest id
        mask = _mask_up_to_eot(ids)  # (B, L)
        n = int(mask.sum(1).max())  # causal attention: the states up to the longest prompt's end need no more
        device = self._tower.positional_embedding.device
        mask = mask.to(device)
        emb = self.encode_tokens(ids[:, :n].to(device)) * mask[:, :n, None]  # (B, n, width), zeros at padding
        return F.pad(emb, (0, 0, 0, self.max_length - n)), mask  # (B, L, width)


def _text_tower_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text-tower entries of a full OpenCLIP state dict (CLIP: top-level keys; CustomTextCLIP: "text.")."""
    if any(k.startswith("text.") for k in state):
        return {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    skip = ("visual.", "logit_scale", "logit_bias", "attn_mask")
    return {k: v for k, v in state.items() if not k.startswith(skip)}


def _load_text_tower(tower: nn.Module, model_name: str, weights: str) -> None:
    """Load ``weights`` (a checkpoint path) into ``tower`` strictly; one ConfigError line on any problem."""
    from open_clip.factory import load_state_dict

    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"conditioning.encoder.weights={weights} does not exist: "
                          f"give the path of an OpenCLIP checkpoint file")
    try:
        state = _text_tower_state(load_state_dict(str(path)))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
        raise ConfigError(
            f"conditioning.encoder.weights={weights} cannot be read as a state dict ({type(exc).__name__}): "
            f"give an OpenCLIP checkpoint (.pt, .bin or .safetensors)"
        ) from None
    expected = tower.state_dict()
    problems = [f"missing key {k!r}" for k in expected if k not in state]
    problems += [f"unexpected key {k!r}" for k in state if k not in expected]
    problems += [
        f"key {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise ConfigError(
            f"conditioning.encoder.weights={weights} does not match the OpenCLIP {model_name} text tower: {problems[0]} "
            f"({len(problems)} mismatch{'es' * (len(problems) > 1)}); pick the model_name the checkpoint was trained as"
        )
    tower.load_state_dict(state, strict=True)
