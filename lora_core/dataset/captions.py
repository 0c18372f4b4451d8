"""Caption processing applied every time a sample is fetched (kohya-compat.md §3, step 4).

Only tag shuffling with ``keep_tokens`` is implemented in this release; the rest of §3
(dropout, wildcards, warm-up, separators) arrives with the options issue and is rejected by
the profile until then. Pure Python; the random source is passed in so a given
(seed, epoch, position) always produces the same caption, which exact resume relies on.
"""

from __future__ import annotations

import random


def split_tags(caption: str, separator: str = ",") -> list[str]:
    return [t.strip() for t in caption.split(separator) if t.strip()]


def process_caption(caption: str, rng: random.Random, *, shuffle: bool, keep_tokens: int,
                    separator: str = ",") -> str:
    """Shuffle the tags after the first ``keep_tokens``; re-join with ", " as sd-scripts does."""
    if not shuffle:
        return caption
    tags = split_tags(caption, separator)
    fixed, flexible = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(flexible)
    return ", ".join(fixed + flexible)


def sample_rng(seed: int, epoch: int, position: int, slot: int) -> random.Random:
    """The random source for one sample: a pure function of where it is in the run."""
    return random.Random(((seed * 1_000_003) + epoch) * 1_000_003 + position * 1_009 + slot)
