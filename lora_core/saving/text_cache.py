"""The on-disk text-encoder output cache: one safetensors file per (caption, text encoders).

This module is the only one that knows the cache's file names and contents (sd-scripts'
``cache_text_encoder_outputs_to_disk``, kohya-compat.md §10, writes ``<stem>_te_outputs.npz``
beside each image; we keep one file per caption and put it in lora-train's own cache folder,
``paths.cache_dir() / "text_encoder_outputs"``, never in the dataset folder).

Layout::

    <root>/<fingerprint[:16]>/<sha256(caption)[:32]>.safetensors

The *fingerprint* (:func:`text_encoder_fingerprint`) hashes everything that decides a
caption's encoding besides the caption: the model family, every text encoder's class, config
and parameter bytes, every tokenizer's vocabulary and merges, ``clip_skip`` and
``max_token_length``. Change any of them and the files land in another folder, so stale
outputs are never read. The file name is a digest of the caption; the metadata repeats the
full fingerprint and the caption (a digest collision is caught there).

Contents: ``hidden_state`` (T, D), the denoiser's text states for the caption (SD's
``encoder_hidden_states``, Flux's T5 states), for SDXL and Flux ``pool`` (P,), the pooled
embedding (sd-scripts keeps ``hidden_state1`` / ``hidden_state2`` / ``pool2``; ours is the
concatenation the U-Net takes), and for Flux ``mask`` (T,), T5's padding mask, in the dtype
they were computed in. A family whose encoding depends on settings besides ``TextSettings``
(Flux: T5's token count and attention mask) adds them to the fingerprint. The metadata also
holds a SHA-256 of the tensors' names, shapes, dtypes and bytes, so a file with flipped
bytes is caught as surely as a truncated one. A file is reused only when its metadata
matches, it loads, the checksum agrees and the tensors are finite; anything else is rebuilt
and overwritten, never fatal. Every write goes through
``lora_core.atomic``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lora_core import paths
from lora_core.atomic import atomic_write
from lora_core.errors import DatasetError
from lora_core.models.bundle import TextConditioning, TextSettings

log = logging.getLogger(__name__)

FORMAT = "lora-tui-text-encoder-outputs"
# Bump when the tensors written for the same fingerprint change meaning (e.g. encode_captions
# starts producing another layout): old files then stop matching.
FORMAT_VERSION = "1"
HIDDEN = "hidden_state"
POOL = "pool"
MASK = "mask"
# transformers config keys that say where a model came from, not what it computes.
_CONFIG_KEYS_IGNORED = ("transformers_version", "_name_or_path", "_commit_hash")


def cache_root() -> Path:
    """Where text-encoder output files go: ``<lora-train cache>/text_encoder_outputs``."""
    return paths.cache_dir() / "text_encoder_outputs"


@dataclass(frozen=True)
class TextKey:
    """Everything a cached caption encoding depends on."""

    caption: str
    fingerprint: str  # text_encoder_fingerprint()

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "fingerprint": self.fingerprint, "caption": self.caption}


def entry_path(root: Path, key: TextKey) -> Path:
    """The cache file of ``key`` under ``root`` (see the module docstring for the layout)."""
    name = hashlib.sha256(key.caption.encode("utf-8")).hexdigest()[:32]
    return root / key.fingerprint[:16] / f"{name}.safetensors"


def text_encoder_fingerprint(family: str, text_encoders: list[Any], tokenizers: list[Any],
                             text: TextSettings, family_settings: dict[str, Any] | None = None
                             ) -> str:
    """A hash of everything besides the caption that decides its text conditioning.

    Same approach as ``latent_cache.vae_fingerprint``: the config (without the keys that only
    say where the model came from) and every parameter's bytes, name, shape and dtype. All
    parameters are hashed, not a sample: a LoRA merged into the text encoder or a fine-tune
    may touch only a few layers. For SDXL's two encoders this reads ~1.6 GB once, about a
    second, far less than encoding the captions it spares. Tokenizers are hashed by their
    full serialised form (vocabulary, merges, normalizer, special tokens) where they have
    one, else by vocabulary and merges.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"format_version": FORMAT_VERSION, "family": family,
                              "clip_skip": text.clip_skip,
                              "max_token_length": text.max_token_length,
                              # only when on, so caches written before it stay valid
                              **({"weighted_captions": True}
                                 if getattr(text, "weighted_captions", False) else {}),
                              # the family's own (Flux's T5 settings); none for SD, so SD
                              # caches written before it stay valid
                              **({"family_settings": family_settings}
                                 if family_settings else {})},
                             sort_keys=False, default=str).encode())
    for encoder in text_encoders:
        _hash_module(digest, encoder)
    for tokenizer in tokenizers:
        _hash_tokenizer(digest, tokenizer)
    return digest.hexdigest()


def _hash_module(digest: Any, module: Any) -> None:
    config = getattr(module, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    config = {k: v for k, v in config.items()
              if not k.startswith("_") and k not in _CONFIG_KEYS_IGNORED}
    digest.update(type(module).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(state[name].shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())


def _hash_tokenizer(digest: Any, tokenizer: Any) -> None:
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
        ranks = getattr(tokenizer, "bpe_ranks", None) or {}
        digest.update(json.dumps(sorted((list(k), v) for k, v in ranks.items())).encode())
    # Padding (SDXL's TE2 pads with "!", not EOS) and the window length change the ids.
    specials = {"special_tokens": str(getattr(tokenizer, "special_tokens_map", {})),
                "model_max_length": getattr(tokenizer, "model_max_length", None)}
    digest.update(json.dumps(specials, sort_keys=True, default=str).encode())


def write_entry(path: Path, key: TextKey, row: TextConditioning) -> None:
    """Write one caption's conditioning (no batch dimension) atomically."""
    tensors = {HIDDEN: _own_storage(row.hidden)}
    if row.pooled is not None:
        tensors[POOL] = _own_storage(row.pooled)
    if row.mask is not None:
        tensors[MASK] = _own_storage(row.mask)
    metadata = {**key.metadata(), "content_sha256": _content_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """CPU copy with a storage of its own (a row of a batch shares the batch's, which
    safetensors would otherwise write whole); the dtype is kept."""
    return tensor.detach().to("cpu").clone().contiguous()


def _content_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_entry(path: Path, key: TextKey) -> TextConditioning | None:
    """The cached conditioning of ``key``, or None when the file is missing, was made for
    something else, or is truncated or corrupt (all mean: encode again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            recorded = metadata.pop("content_sha256", None)
            if metadata != key.metadata():
                return None
            names = set(handle.keys())
            if HIDDEN not in names or not names <= {HIDDEN, POOL, MASK}:
                return None
            tensors = {name: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        log.info("text-encoder cache file %s is unreadable (%s); encoding it again", path, exc)
        return None
    if recorded != _content_digest(tensors):
        log.info("text-encoder cache file %s is corrupt; encoding it again", path)
        return None
    hidden, pooled, mask = tensors[HIDDEN], tensors.get(POOL), tensors.get(MASK)
    if hidden.ndim != 2 or (pooled is not None and pooled.ndim != 1) \
            or (mask is not None and mask.shape != hidden.shape[:1]):
        return None
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        return None
    return TextConditioning(hidden, pooled, mask)


def load_entry(path: Path) -> TextConditioning:
    """The conditioning in a file checked by :func:`read_entry` earlier."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            pooled = handle.get_tensor(POOL) if POOL in names else None
            mask = handle.get_tensor(MASK) if MASK in names else None
            return TextConditioning(handle.get_tensor(HIDDEN), pooled, mask)
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise DatasetError(
            f"cannot read the text-encoder cache file {path}: {exc}",
            "it changed or vanished during training; start the run again (the cache is "
            "rebuilt), or turn off cache_text_encoder_outputs_to_disk") from None
