"""``.safetensors`` headers, read without torch: every tensor's dtype, shape and offsets and
the ``__metadata__`` strings, checked for what makes a file unloadable (a truncated download,
a damaged header) before any weight is read. Every family's recognition and the LoRA tools
start here.

A ``.safetensors`` file is 8 bytes of little-endian header length, that much JSON, then the
tensors' bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from lora_core.errors import ModelError
from lora_core.models.files import DAMAGED_HINT

# Larger than any real header (SDXL's is ~200 kB); a bigger number means a damaged file.
_MAX_HEADER_BYTES = 100 * 2**20


# A tensor's place in a .safetensors file: (dtype name, shape, start, end), the offsets
# counted from the first byte after the header.
TensorEntry = tuple[str, tuple[int, ...], int, int]


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``{key: shape}`` and the ``__metadata__`` strings of a ``.safetensors`` file (checked
    as :func:`read_entries` checks it)."""
    _, entries, metadata = read_entries(path)
    return {key: entry[1] for key, entry in entries.items()}, metadata


def read_entries(path: Path) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    """Where a ``.safetensors`` file's data starts, every tensor's entry and the
    ``__metadata__`` strings.

    Checks what makes a file unloadable before any weight is read: a header longer than the
    file, JSON that does not parse, entries without dtype/shape/offsets, and tensors whose
    data would lie beyond the end of the file (a truncated download)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelError(f"{path} is not a .safetensors file (only {size} bytes)",
                                 DAMAGED_HINT)
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_HEADER_BYTES):
                raise ModelError(f"{path} has a broken .safetensors header (it claims "
                                 f"{length} bytes of header in a {size}-byte file)",
                                 DAMAGED_HINT)
            raw = fh.read(length)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}",
                         "check that the file exists and is readable") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} has a broken .safetensors header ({exc})",
                         DAMAGED_HINT) from None
    if not isinstance(header, dict):
        raise ModelError(f"{path} has a broken .safetensors header (not a JSON object)",
                         DAMAGED_HINT)
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - length
    entries: dict[str, TensorEntry] = {}
    for key, entry in header.items():
        try:
            shape = tuple(int(n) for n in entry["shape"])
            start, end = (int(n) for n in entry["data_offsets"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path} has a broken .safetensors header (entry {key!r})",
                             DAMAGED_HINT) from None
        if end > data_bytes or start > end:
            raise ModelError(f"{path} is truncated: tensor {key!r} ends at byte {end} of "
                             f"{data_bytes} data bytes", DAMAGED_HINT)
        entries[key] = (dtype, shape, start, end)
    return 8 + length, entries, {str(k): str(v) for k, v in metadata.items()}
