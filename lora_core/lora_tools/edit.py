"""`lora-train edit FILE`: a LoRA's title, description, author, keywords, tags and cover.

Each field is written where A1111's Additional Networks extension reads it (``ssmd_*``) and
where ModelSpec readers do (``modelspec.*``: Civitai, ComfyUI), both kept in step
(kohya-compat.md §7.4, §7.5; ``inspect.USER_FIELDS``). The cover goes in as the extension
stores covers (a JSON list of base64 PNGs) and as a ModelSpec thumbnail (a data URL).

Only the safetensors header is rewritten: the tensor bytes are copied from the original as
they are, so every tensor, and ``sshs_model_hash``, stay the same. The original is kept as
``FILE.backup`` first (an existing backup is left alone: it is the older original, and the
report says so), and the new file replaces the old one atomically. No torch.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import struct
from pathlib import Path

from lora_core.atomic import atomic_write
from lora_core.errors import LoraError
from lora_core.lora_tools.inspect import USER_FIELDS
from lora_core.saving.lora_header import read_lora_header

COVER_SIDE_PX = 512  # covers are scaled down to this, as the web UIs show them small


def edit_lora(path: Path, fields: dict[str, str], clear: list[str] | None = None,
              cover: Path | None = None) -> list[str]:
    """Set ``fields`` (title, description, author, keywords, tags), a cover image and clear
    the fields named in ``clear``; returns what was done, for the report. Raises LoraError
    (the file untouched) for bad input."""
    path = Path(path)
    # a LoRA, readable (a Flux one with diffusers keys too): refused before anything is written
    header = read_lora_header(path, foreign_keys=True)
    unknown = [name for name in [*fields, *(clear or [])] if name not in USER_FIELDS]
    if unknown:
        raise LoraError(f"no user field named {unknown[0]!r}",
                        f"the fields are: {', '.join(USER_FIELDS)}")
    metadata = dict(header.metadata)
    done = []
    for name, text in fields.items():
        for key in USER_FIELDS[name]:
            metadata[key] = text
        done.append(f"{name}: {text}")
    if cover is not None:
        png = cover_png(cover)
        encoded = base64.b64encode(png).decode("ascii")
        metadata["ssmd_cover_images"] = json.dumps([encoded])
        metadata["modelspec.thumbnail"] = f"data:image/png;base64,{encoded}"
        done.append(f"cover: {cover} ({len(png) // 1024} KiB as PNG)")
    for name in clear or []:
        for key in USER_FIELDS[name]:
            metadata.pop(key, None)
        done.append(f"{name}: cleared")
    backup = path.with_name(path.name + ".backup")
    folder = path.resolve().parent
    # The backup and the new file go beside the original. A folder marked read-only is
    # respected even by a user who could write it (root), as caption files are.
    if not os.access(folder, os.W_OK) or not folder.stat().st_mode & stat.S_IWUSR:
        raise LoraError(f"the folder {folder} is read-only, so {path.name} cannot be edited "
                        "in place (nothing was changed)",
                        "copy the file to a folder you can write to and edit the copy, or "
                        "make the folder writable (chmod u+w)")
    if backup.exists():
        done.append(f"the backup {backup} exists already and was kept (it is the older "
                    "original); this edit has no backup of its own")
    else:
        try:
            shutil.copy2(path, backup)
        except OSError as exc:  # a read-only folder, a full disk: nothing written yet
            backup.unlink(missing_ok=True)
            raise LoraError(f"cannot write the backup {backup}: {exc.strerror or exc}; "
                            f"{path} was left as it was",
                            "edit a copy in a folder you can write to, or make the folder "
                            "writable (chmod u+w)") from None
        done.append(f"the original is kept as {backup}")
    rewrite_metadata(path, metadata)
    return done


def cover_png(image_path: Path) -> bytes:
    """``image_path`` as a PNG of at most COVER_SIDE_PX a side; LoraError when it is not an
    image that can be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            image.load()
            image = image.convert("RGB")
    except FileNotFoundError:
        raise LoraError(f"cover image not found: {image_path}", "check the path") from None
    except Image.DecompressionBombError as exc:  # e.g. 20000x20000: gigabytes once decoded
        raise LoraError(f"{image_path} is too large to use as a cover ({exc})",
                        f"scale it down first (covers are stored at {COVER_SIDE_PX} px a "
                        "side)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LoraError(f"{image_path} is not an image that can be read ({exc})",
                        "give a .png, .jpg or .webp picture") from None
    image.thumbnail((COVER_SIDE_PX, COVER_SIDE_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rewrite_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the ``__metadata__`` of the safetensors file ``path``: a new header, the
    tensor bytes copied unchanged, written to a temporary file renamed into place."""
    with open(path, "rb") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(header_len))
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # tensor data starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(path, "rb") as source, open(tmp, "wb") as target:
            target.write(struct.pack("<Q", len(encoded)))
            target.write(encoded)
            source.seek(8 + header_len)
            shutil.copyfileobj(source, target, 1 << 20)

    atomic_write(path, write)
