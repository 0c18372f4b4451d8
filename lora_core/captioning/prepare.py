"""`lora-train prepare SRC --name "ohwx cube" --repeats N | --target-steps S -o DIR`.

Lays a flat folder of pictures (and their caption files) out as ``DIR/<repeats>_<name>/``,
the layout training reads. Files are hard-linked where the file system allows, else copied;
the source is never moved or changed. With ``--target-steps`` the repeats are worked out as
the kohya_ss GUI's folder tool does: steps / (images x epochs / batch), at least 1.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from lora_core.captioning.files import images_in
from lora_core.errors import LoraError


def repeats_for(target_steps: int, images: int, epochs: int = 1, batch_size: int = 1) -> int:
    """The repeats that make about ``target_steps`` steps over ``epochs`` epochs."""
    return max(1, round(target_steps * batch_size / (images * epochs)))


def prepare_folder(source: Path, name: str, output: Path, repeats: int | None = None,
                   target_steps: int | None = None, epochs: int = 1, batch_size: int = 1,
                   caption_extensions: tuple[str, ...] = (".txt", ".caption")
                   ) -> tuple[Path, int, int, int]:
    """(the new folder, its repeats, the pictures, the files placed with their captions);
    LoraError for bad input, before anything is written."""
    source, output = Path(source), Path(output)
    if not name.strip() or "/" in name or "\\" in name:
        raise LoraError(f"--name {name!r} cannot be a folder name",
                        "give the trigger words, e.g. --name \"ohwx cube\"")
    images = [p for p in images_in(source) if p.parent == source]
    if not images:
        raise LoraError(f"{source} has no pictures directly inside it",
                        "prepare lays out a flat folder of pictures")
    if (repeats is None) == (target_steps is None):
        raise LoraError("give --repeats N or --target-steps S (one of them)",
                        "e.g. --repeats 10, or --target-steps 1500")
    for value, label in ((repeats, "--repeats"), (target_steps, "--target-steps"),
                         (epochs, "--epochs"), (batch_size, "--batch-size")):
        if value is not None and value < 1:
            raise LoraError(f"{label} must be 1 or more, not {value}", "give a whole number")
    if repeats is None:
        repeats = repeats_for(int(target_steps or 0), len(images), epochs, batch_size)
    folder = output / f"{repeats}_{name.strip()}"
    if folder.exists() and any(folder.iterdir()):
        raise LoraError(f"{folder} exists already and is not empty",
                        "choose another output folder; nothing is overwritten")
    resolved = source.resolve()
    if resolved == folder.resolve() or resolved in folder.resolve().parents:
        raise LoraError("the output folder is inside the source folder",
                        "choose an output folder outside it")
    folder.mkdir(parents=True, exist_ok=True)
    placed = 0
    for image in images:
        files = [image] + [image.with_suffix(ext) for ext in caption_extensions
                           if image.with_suffix(ext).is_file()]
        for path in files:
            _link_or_copy(path, folder / path.name)
            placed += 1
    return folder, repeats, len(images), placed


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def steps_of(images: int, repeats: int, epochs: int = 1, batch_size: int = 1) -> int:
    return math.ceil(images * repeats / batch_size) * epochs
