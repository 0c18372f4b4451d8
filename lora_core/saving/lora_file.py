"""The LoRA ``.safetensors`` file: names, dtype, hashes, writing and reading back.

This module owns the on-disk format (house-style rule 9). Files are what sd-scripts writes
(kohya-compat.md §7): kohya key names, every tensor (``alpha`` too) cast to the save
precision, string-valued ``ss_*`` metadata, ``sshs_model_hash`` / ``sshs_legacy_hash`` and
``modelspec.*``. Every write goes to a temporary file that is linked into place, so a crash
never leaves a torn file and an existing file is never replaced.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_to_bytes

from lora_core.atomic import atomic_write
from lora_core.errors import ModelError

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cast_state_dict(state_dict: dict[str, torch.Tensor], save_precision: str
                    ) -> dict[str, torch.Tensor]:
    dtype = SAVE_DTYPES[save_precision]
    # Integer tensors (IA3's on_input flag) keep their type.
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
            .contiguous() for k, v in state_dict.items()}


def model_hashes(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]
                 ) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts computes them (§7.3).

    Both hash an in-memory safetensors serialisation of the tensors plus the ``ss_*``
    metadata only: the model hash covers the tensor data after the header, the legacy hash
    the 64 KiB at offset 1 MiB (empty for small files, as in sd-scripts).
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save_to_bytes(state_dict, ss_only)
    header_len = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_len:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str],
              save_precision: str, *, replace: bool = False) -> Path:
    """Write a LoRA file atomically; never replaces an existing file unless ``replace``."""
    tensors = cast_state_dict(state_dict, save_precision)
    metadata = {k: str(v) for k, v in metadata.items()}
    model_hash, legacy_hash = model_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy_hash
    # Serialised in memory, written with Python's file I/O: a full disk then raises OSError
    # with its errno (safetensors' own writer reports it as an opaque SafetensorError).
    data = save_to_bytes(tensors, metadata)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data), exclusive=not replace)
    return Path(path)


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file, with an error naming the file when it is broken."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"LoRA file not found: {path}", "check `[network] network_weights`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable .safetensors file: {exc}",
                         "the file may be truncated or not a LoRA; download or copy it again"
                         ) from None
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    return read_lora(path)[1]
