"""`lora-train tags DIR`: bulk edits over every caption of a dataset, and its tag table.

Operations run in this order on each caption's tags: remove, replace, add (at the end, or
first with ``first``), move-first, dedupe. Tags compare exactly after trimming spaces. Only
captions that change are written (through ``files.write_changes``: undo first). A caption
file of several lines (alternative captions, sd-scripts' enable_wildcard) is edited line by
line: every line gets the same edit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lora_core.captioning.files import (
    Change,
    caption_path,
    caption_tags,
    images_in,
    join_tags,
    read_caption,
    split_tags,
    write_changes,
)
from lora_core.errors import LoraError


@dataclass
class TagEdit:
    add: list[str] = field(default_factory=list)
    first: bool = False  # added tags go first (trigger words)
    remove: list[str] = field(default_factory=list)
    replace: dict[str, str] = field(default_factory=dict)
    move_first: list[str] = field(default_factory=list)
    dedupe: bool = False

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace or self.move_first or self.dedupe)

    def apply(self, tags: list[str]) -> list[str]:
        tags = [t for t in tags if t not in set(self.remove)]
        # "hair=" replaces a tag with nothing: the tag goes (an empty tag would leave ", ,").
        tags = [t for t in (self.replace.get(t, t) for t in tags) if t]
        new = [t for t in self.add if t not in tags]
        if self.first:
            tags = [t for t in self.add] + [t for t in tags if t not in set(self.add)]
        else:
            tags = tags + new
        front = [t for t in self.move_first if t in tags]
        tags = front + [t for t in tags if t not in set(front)]
        if self.dedupe:
            tags = list(dict.fromkeys(tags))
        return tags


def parse_replace(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip():
            raise LoraError(f"--replace {item!r} is not old=new", "e.g. --replace \"1girl=woman\"")
        pairs[old.strip()] = new.strip()
    return pairs


def plan_edit(folder: Path, edit: TagEdit, extension: str) -> tuple[list[Change], int]:
    """The caption changes ``edit`` makes, and how many images have no caption (left
    alone: tagging them is `lora-train caption`'s job)."""
    changes, missing = [], 0
    for image in images_in(folder):
        path = caption_path(image, extension)
        before = read_caption(path)
        if before is None:
            missing += 1
            continue
        after = "\n".join(join_tags(edit.apply(split_tags(line))) if line.strip() else line
                          for line in before.split("\n"))
        if after != before:
            changes.append(Change(path, before, after))
    return changes, missing


def edit_tags(folder: Path, edit: TagEdit, extension: str = ".txt",
              dry_run: bool = False) -> tuple[list[Change], int]:
    changes, missing = plan_edit(folder, edit, extension)
    if not dry_run:
        write_changes(changes, "tags", folder)
    return changes, missing


def tag_table(folder: Path, extension: str = ".txt") -> list[tuple[str, int]]:
    """Each tag with the number of captions holding it, most used first (what the tag
    summary of a LoRA trained on the folder says)."""
    counts: Counter = Counter()
    for image in images_in(folder):
        caption = read_caption(caption_path(image, extension))
        if caption:
            counts.update({tag for line in caption_tags(caption) for tag in line})
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
