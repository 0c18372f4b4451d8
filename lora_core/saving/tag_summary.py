"""The optional tag summary file: every caption tag of the training images with its count.

LoRA Easy Training Scripts wrote this next to the LoRA so users can see (and share) the
tags a LoRA was trained on, ordered by count or alphabetically. One ``[count] tag`` line
each. Regularization captions are not counted: they are not what the LoRA is for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lora_core.atomic import atomic_write_bytes


def tag_counts(scan) -> Counter:
    counts: Counter = Counter()
    for subset in scan.train:
        counts.update(subset.tag_frequency)
    return counts


def render_tag_summary(counts: Counter, order: str) -> str:
    if order == "alphabetical":
        items = sorted(counts.items(), key=lambda kv: kv[0])
    else:
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "".join(f"[{count}] {tag}\n" for tag, count in items)


def write_tag_summary(path: Path, scan, order: str, replace: bool = False) -> Path:
    """Write the summary atomically; an existing file is never replaced unless ``replace``
    (a resumed run replaces the one its own stopped part wrote)."""
    atomic_write_bytes(path, render_tag_summary(tag_counts(scan), order).encode("utf-8"),
                       exclusive=not replace)
    return path
