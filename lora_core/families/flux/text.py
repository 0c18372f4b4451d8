"""Flux's text conditioning: CLIP-L's pooled output and T5-XXL's token states.

As sd-scripts' ``strategy_flux``: CLIP-L (``clip_l``) reads the caption padded/truncated to
77 tokens and gives ``pooler_output`` (B, 768 in the real model) — the DiT's ``y``; T5
(``t5xxl``) reads it padded/truncated to ``t5xxl_max_token_length`` (512 dev, 256 schnell)
and gives the last hidden states (B, L, 4096) — the DiT's ``txt``, with all-zero position
ids and the padding mask (used only with ``apply_t5_attn_mask``, both in T5 and in the DiT's
attention). Chroma has no CLIP-L: ``y`` is absent.

Both encoders load from the single files users have (transformers key names), with their
configs read from the tensors. fp8 (e4m3fn) files are read as they are and upcast to the
compute dtype, or (``load_t5(fp8=True)``) kept in fp8 per Linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lora_core.errors import ModelError
from lora_core.models.headers import read_entries

CLIP_MAX_LENGTH = 77
CLIP_HEAD_DIM = 64  # CLIP ViT-L/14 and OpenCLIP towers: heads of 64
T5_MAX_LENGTH = {"dev": 512, "schnell": 256, "chroma": 512}
CLIP_L_TOKENIZER_ID = "openai/clip-vit-large-patch14"
T5_XXL_TOKENIZER_ID = "google/t5-v1_1-xxl"


def _shapes(path: Path, where: str, what: str) -> dict[str, tuple[int, ...]]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{where}: {path} does not exist", f"give the path of the {what} file")
    _, entries, _ = read_entries(path)
    return {k: e[1] for k, e in entries.items()}


def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.search(pattern, k))}
    return max(found) + 1 if found else 0


def clip_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str = "clip_l"):
    from transformers import CLIPTextConfig

    strip = {k.removeprefix("text_model."): v for k, v in shapes.items()}
    if "embeddings.token_embedding.weight" not in strip:
        raise ModelError(f"{where}: not a CLIP text encoder (no "
                         "text_model.embeddings.token_embedding.weight)",
                         "pass Flux's clip_l.safetensors (CLIP ViT-L/14 text encoder)")
    vocab, hidden = strip["embeddings.token_embedding.weight"]
    layers = _count(strip, r"^encoder\.layers\.(\d+)\.")
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=strip["encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // CLIP_HEAD_DIM),
        max_position_embeddings=strip["embeddings.position_embedding.weight"][0],
        hidden_act="quick_gelu", projection_dim=hidden,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)


def t5_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str = "t5xxl"):
    from transformers import T5Config

    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    embed = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
    if bias not in shapes or embed not in shapes:
        raise ModelError(f"{where}: not a T5 encoder (no {bias} / shared.weight)",
                         "pass Flux's t5xxl_fp16.safetensors (or an fp8 e4m3fn T5-XXL file)")
    vocab, d_model = shapes[embed]
    buckets, heads = shapes[bias]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ff_key = "wi_0" if gated else "wi"
    return T5Config(
        vocab_size=vocab, d_model=d_model,
        d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes[f"encoder.block.0.layer.1.DenseReluDense.{ff_key}.weight"][0],
        num_layers=_count(shapes, r"^encoder\.block\.(\d+)\."), num_heads=heads,
        relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu" if gated
        else "relu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
        dropout_rate=0.0)


def _load(model, path: Path, dtype, where: str, rename) -> None:
    from safetensors import safe_open

    expected = model.state_dict()
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            target = rename(key, expected)
            if target is not None:
                state[target] = handle.get_tensor(key).to(dtype)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(f"{where}: {path.name} lacks {len(missing)} tensors, e.g. "
                         f"'{missing[0]}'", "the file is incomplete or of another model")
    model.load_state_dict(state, strict=True)


def load_clip_l(path: Path, *, dtype=torch.float32, where: str = "clip_l"):
    """CLIP-L text encoder from its single file (``text_model.*`` keys, with or without the
    prefix), frozen and in eval mode."""
    from transformers import CLIPTextModel

    path = Path(path)
    model = CLIPTextModel(clip_config_from_shapes(_shapes(path, where, "CLIP-L"),
                                                  f"{where}: {path.name}"))

    def rename(key: str, expected) -> str | None:
        bare = key.removeprefix("text_model.")
        for candidate in (key, bare, f"text_model.{bare}"):
            if candidate in expected:
                return candidate
        return None  # text_projection, position_ids and other extras

    _load(model, path, dtype, where, rename)
    return model.to(dtype).eval().requires_grad_(False)


def load_t5(path: Path, *, dtype=torch.float32, fp8: bool = False, where: str = "t5xxl"):
    """T5 encoder from its single file (transformers' ``T5EncoderModel`` keys), frozen.

    ``fp8`` (sd-scripts' ``fp8_base`` applied to T5): every Linear keeps its weight as
    float8_e4m3fn and computes in ``dtype`` (``fp8.Fp8Linear``); embeddings and layer norms
    stay in ``dtype``, as sd-scripts keeps T5LayerNorm and Embedding out of fp8.
    """
    from transformers import T5EncoderModel

    from lora_core.models.fp8 import to_fp8

    path = Path(path)
    config = t5_config_from_shapes(_shapes(path, where, "T5-XXL"), f"{where}: {path.name}")
    if not fp8:
        model = T5EncoderModel(config)
        _load_t5_tied(model, path, dtype, where)
        return model.to(dtype).eval().requires_grad_(False)
    # fp8: built empty and filled one tensor at a time, each Linear weight narrowed to fp8
    # as it is read, so the wide model never exists in memory.
    with torch.device("meta"):
        model = T5EncoderModel(config)
    to_fp8(model, compute_dtype=dtype)
    _load_t5_tied(model, path, dtype, where, assign=True)
    return model.eval().requires_grad_(False)


def _load_t5_tied(model, path: Path, dtype, where: str, assign: bool = False) -> None:
    """Load a T5 file whose token embedding is stored once (``shared``) or twice. With
    ``assign`` (an empty model whose Linears are ``Fp8Linear``), those weights are kept as
    float8 and every other tensor is read in ``dtype``."""
    from safetensors import safe_open

    from lora_core.models.fp8 import FP8_DTYPE, Fp8Linear

    expected = model.state_dict()
    fp8_keys = {f"{name}.weight" for name, m in model.named_modules()
                if isinstance(m, Fp8Linear)}
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            if key in expected:
                tensor = handle.get_tensor(key)
                state[key] = tensor.to(FP8_DTYPE if key in fp8_keys else dtype)
    state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))
    missing = [k for k in expected if state.get(k) is None]
    if missing:
        raise ModelError(f"{where}: {path.name} lacks {len(missing)} tensors, e.g. "
                         f"'{missing[0]}'", "the file is incomplete or of another model")
    model.load_state_dict(state, strict=True, assign=assign)


@dataclass
class TextConditioning:
    """What the DiT needs from a caption (sd-scripts' [l_pooled, t5_out, txt_ids, mask])."""

    pooled: Tensor | None  # (B, clip width); None for Chroma
    t5_states: Tensor  # (B, L, t5 width)
    txt_ids: Tensor  # (B, L, 3) zeros
    t5_mask: Tensor  # (B, L) 1 for real tokens


def load_tokenizers(clip_dir: Path | None, t5_dir: Path, t5_max_length: int):
    """CLIP tokenizer (77 tokens, pads with EOS) and T5 tokenizer (``t5_max_length``) from
    the folders ``tokenizers.find_*`` gave; ``clip_dir`` None (Chroma) gives no CLIP one."""
    from lora_core.families.flux.tokenizers import load_t5_tokenizer
    from lora_core.models.tokenizers import CLIP_L, load_tokenizer

    clip = load_tokenizer(CLIP_L, Path(clip_dir)) if clip_dir is not None else None
    return clip, load_t5_tokenizer(Path(t5_dir), t5_max_length)


def encode_text(captions: list[str], clip_tokenizer, t5_tokenizer, clip_model, t5_model,
                *, t5_max_length: int, apply_t5_attn_mask: bool) -> TextConditioning:
    """Encode captions as sd-scripts' Flux strategy does (see the module docstring)."""
    pooled = None
    if clip_model is not None:
        ids = clip_tokenizer(captions, max_length=CLIP_MAX_LENGTH, padding="max_length",
                             truncation=True, return_tensors="pt")["input_ids"]
        pooled = clip_model(ids.to(clip_model.device)).pooler_output
    tokens = t5_tokenizer(captions, max_length=t5_max_length, padding="max_length",
                          truncation=True, return_tensors="pt")
    mask = tokens["attention_mask"]
    states = t5_model(tokens["input_ids"].to(t5_model.device),
                      attention_mask=mask.to(t5_model.device) if apply_t5_attn_mask else None
                      ).last_hidden_state
    return TextConditioning(pooled, states, torch.zeros(states.shape[0], states.shape[1], 3),
                            mask)
