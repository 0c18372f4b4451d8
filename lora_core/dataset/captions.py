"""Caption processing applied every time a sample is fetched (kohya-compat.md §3).

:func:`process_caption` turns a subset's raw caption into the text trained on at one step,
in sd-scripts' order (``BaseDataset.process_caption``):

1. ``caption_prefix`` / ``caption_suffix`` joined with a space;
2. whole-caption dropout (``caption_dropout_rate``, ``caption_dropout_every_n_epochs``);
3. wildcards (one random line, then ``{a|b|c}`` choices) or the first line only;
4. tag processing, only when shuffling, token warm-up or tag dropout is on: split into
   fixed / flexible / fixed-suffix tags, warm-up truncation, shuffle, tag dropout, re-join
   with ``", "``;
5. ``secondary_separator`` replaced by ``caption_separator``.

Pure Python, no torch. Every random choice comes from the ``random.Random`` passed in
(:func:`sample_rng` of the sample's place in the run), never from the global ``random``
module, so a given (seed, epoch, position) always produces the same caption: exact resume
and data-loader workers both rely on that. This module does not read caption files (that is
``scan.py``) and does not tokenize (that is the model family's ``tokenize``).
"""

from __future__ import annotations

import math
import random
import re

from lora_core.dataset.subset_options import SubsetOptions

# `{...}` with no closing brace inside: sd-scripts' wildcard pattern. The alternatives are
# split on "|"; "{a{b|c}" therefore offers "a{b" and "c", as it does there.
_WILDCARD = re.compile(r"\{([^}]+)\}")


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """The tags of a caption: split on ``separator``, stripped, empty ones removed."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def process_caption(caption: str, opts: SubsetOptions, rng: random.Random, *, epoch: int,
                    step: int, max_train_steps: int) -> str:
    """The caption trained on for one fetch of one image.

    ``epoch`` is 1-based (the epoch being trained, as sd-scripts' ``current_epoch``);
    ``step`` is the number of optimizer steps completed before this batch (0 for the first
    batch, sd-scripts' ``global_step`` when the batch is drawn); ``max_train_steps`` is the
    run's total optimizer steps (token warm-up given as a ratio is relative to it).
    """
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        # On a multi-line (wildcard) caption the prefix lands on the first line and the
        # suffix on the last, exactly as in sd-scripts, which joins before choosing a line.
        caption = caption + " " + opts.caption_suffix

    if is_dropped(opts, rng, epoch):
        return ""

    if opts.enable_wildcard:
        caption = expand_wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]

    if opts.shuffle_caption or opts.token_warmup_step > 0 or opts.caption_tag_dropout_rate > 0:
        caption = _process_tags(caption, opts, rng, step, max_train_steps)

    if opts.secondary_separator:
        # Words joined by the secondary separator were one tag for shuffling and dropout
        # above; now they become ordinary separated words ("a;;;b" -> "a,b").
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def is_dropped(opts: SubsetOptions, rng: random.Random, epoch: int) -> bool:
    """Whole-caption dropout: train this sample unconditioned (empty caption).

    Either at random with probability ``caption_dropout_rate``, or on every epoch whose
    1-based number is a multiple of ``caption_dropout_every_n_epochs``. Dropping the caption
    some of the time teaches the model the unconditional prediction that classifier-free
    guidance needs (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).
    """
    # The random number is drawn only when the rate is set, as in sd-scripts.
    if opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate:
        return True
    n = opts.caption_dropout_every_n_epochs
    return n > 0 and epoch % n == 0


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """One random line of a multi-line caption, then every ``{a|b|c}`` replaced by one of
    its alternatives; ``{{`` and ``}}`` stand for literal braces."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    # Hide the escaped braces behind marks the caption does not contain, so the pattern
    # cannot see them, and restore them as single braces afterwards.
    open_mark, close_mark = "\u2985", "\u2986"
    while open_mark in caption or close_mark in caption:
        open_mark += "\u2985"
        close_mark += "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def warmup_steps_of(opts: SubsetOptions, max_train_steps: int) -> int:
    """Steps until token warm-up uses every tag (0: warm-up off).

    ``token_warmup_step`` below 1 is a ratio of the run: ``floor(ratio · max_train_steps)``.
    """
    if opts.token_warmup_step < 1:
        return math.floor(opts.token_warmup_step * max_train_steps)
    return int(opts.token_warmup_step)


def warmup_tag_count(num_tags: int, opts: SubsetOptions, step: int,
                     max_train_steps: int) -> int | None:
    """How many flexible tags token warm-up keeps at ``step``; None once it is over.

    Linear from ``token_warmup_min`` tags at step 0 to all of them at the warm-up step:
    ``floor(step · (num_tags − token_warmup_min) / warmup_steps) + token_warmup_min``.
    """
    warmup_steps = warmup_steps_of(opts, max_train_steps)
    if not warmup_steps or step >= warmup_steps:
        return None
    # The same floating-point expression as sd-scripts, so a floor never rounds the other way.
    growth = step * ((num_tags - opts.token_warmup_min) / warmup_steps)
    return math.floor(growth) + opts.token_warmup_min


def _split_fixed_flexible(caption: str,
                          opts: SubsetOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed, flexible, fixed suffix) tags; only the flexible ones move or drop out.

    With ``keep_tokens_separator`` present: before its first occurrence is fixed, between the
    first and second flexible, after the second the fixed suffix (empty tags removed), and
    ``keep_tokens`` is ignored. Otherwise the first ``keep_tokens`` tags are fixed. That path
    keeps empty tags (``"a,,b"`` has three), as sd-scripts does, so the output matches it.
    """
    sep = opts.keep_tokens_separator
    if sep and sep in caption:
        fixed_part, flexible_part = caption.split(sep, 1)
        suffix_part = ""
        if sep in flexible_part:
            flexible_part, suffix_part = flexible_part.split(sep, 1)
        return (split_tags(fixed_part, opts.caption_separator),
                split_tags(flexible_part, opts.caption_separator),
                split_tags(suffix_part, opts.caption_separator))
    tags = [t.strip() for t in caption.strip().split(opts.caption_separator)]
    keep = max(opts.keep_tokens, 0)
    return tags[:keep], tags[keep:], []


def _process_tags(caption: str, opts: SubsetOptions, rng: random.Random, step: int,
                  max_train_steps: int) -> str:
    fixed, flexible, suffix = _split_fixed_flexible(caption, opts)
    # Warm-up truncates before shuffling: early steps see the caption's first tags, a
    # curriculum from short to full captions.
    count = warmup_tag_count(len(flexible), opts, step, max_train_steps)
    if count is not None:
        flexible = flexible[:count]
    if opts.shuffle_caption:
        rng.shuffle(flexible)
    if opts.caption_tag_dropout_rate > 0:
        flexible = [t for t in flexible if rng.random() >= opts.caption_tag_dropout_rate]
    return ", ".join(fixed + flexible + suffix)


def sample_rng(seed: int, epoch: int, position: int, slot: int) -> random.Random:
    """The random source for one sample: a pure function of where it is in the run."""
    return random.Random(((seed * 1_000_003) + epoch) * 1_000_003 + position * 1_009 + slot)
