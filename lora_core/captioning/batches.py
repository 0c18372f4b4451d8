"""The one loop every captioning model runs through (the WD14 tagger, the sentence
captioners): which pictures to caption (only those without a caption unless the mode says
otherwise), the pictures checked before a model is loaded, batches with progress, a cancel
between batches, the new text merged with the old, and the writing (undo first, through
``files.write_changes``). A model only turns a batch of pictures into texts.

An error anywhere (an unreadable picture, a caption that is not UTF-8, a model that fails)
writes nothing: the changes are written once, after the last batch. A cancel writes the
finished batches, never a caption half-way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_core.captioning.files import (
    Change,
    caption_path,
    images_in,
    read_caption,
    write_changes,
)
from lora_core.errors import LoraError

MODES = ("missing", "overwrite", "append")


@dataclass
class BatchPlan:
    """How a folder is captioned, whatever the model: the caption files' extension, which
    pictures (``mode``), how many per batch, at most ``limit`` (a preview)."""

    caption_extension: str = ".txt"
    mode: str = "missing"  # "missing", "overwrite" or "append"
    batch_size: int = 4
    limit: int | None = None


def chosen_pictures(folder: Path, plan: BatchPlan) -> list[tuple[Path, str | None]]:
    """(picture, its caption or None) for each picture to caption, in order."""
    if plan.mode not in MODES:
        raise LoraError(f"unknown caption mode {plan.mode!r}", f"one of {', '.join(MODES)}")
    chosen = []
    for image in images_in(folder):
        existing = read_caption(caption_path(image, plan.caption_extension))
        if existing is None or plan.mode != "missing":
            chosen.append((image, existing))
    return chosen if plan.limit is None else chosen[:plan.limit]


def open_picture(path: Path):
    """The picture as RGB; a clear error naming it when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode != "RGBA" else _on_white(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise LoraError(f"{path} cannot be read as a picture ({exc})",
                        "replace or remove it; no caption was written") from None


def _on_white(image):
    from PIL import Image

    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    return canvas.convert("RGB")


def check_pictures(images: Sequence[Path]) -> None:
    """Every picture's header reads as a picture: refused before a model is loaded (which
    can take a minute) rather than after half the batches."""
    from PIL import Image, UnidentifiedImageError

    for path in images:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise LoraError(f"{path} cannot be read as a picture ({exc})",
                            "replace or remove it; no caption was written") from None


def caption_in_batches(folder: Path, plan: BatchPlan,
                       load: Callable[[], Callable[[list[Path]], list[str | None]]],
                       merge: Callable[[str | None, str], str], dry_run: bool = False,
                       progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] | None = None,
                       command: str = "caption") -> list[Change]:
    """Caption the chosen pictures of ``folder``: ``load()`` gives the model (called once,
    only when there is a picture to caption) as a function from a batch of pictures to
    their texts (None: the model said nothing, the picture is left without a caption);
    ``merge(existing caption, text)`` is the caption written. Returns the changes,
    written unless ``dry_run``."""
    chosen = chosen_pictures(folder, plan)
    if not chosen:
        return []
    check_pictures([image for image, _ in chosen])
    caption_batch = load()
    changes: list[Change] = []
    size = max(1, plan.batch_size)
    for start in range(0, len(chosen), size):
        if cancelled is not None and cancelled():
            break
        batch = chosen[start:start + size]
        texts = caption_batch([image for image, _ in batch])
        for (image, existing), text in zip(batch, texts, strict=True):
            if text is None:
                continue
            changes.append(Change(caption_path(image, plan.caption_extension), existing,
                                  merge(existing if plan.mode == "append" else None, text)))
        if progress is not None:
            progress(min(start + size, len(chosen)), len(chosen))
    if not dry_run:
        write_changes(changes, command, folder)
    return changes
