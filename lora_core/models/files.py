"""What the model readers share: the file kinds they accept and how they word a damaged
file. ``loading`` (what a model spec is), ``single_file`` (reading checkpoints),
``checkpoint`` (safetensors headers) and ``pickle_scan`` use this; none of them imports
another's private names. No torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
DAMAGED_HINT = "the file is damaged or incomplete; copy or download it again"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries write paragraphs)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def no_transformers_progress_bar() -> Iterator[None]:
    """transformers 5.x draws a "Loading weights" bar on stderr; the trainer reports its own
    progress through events, so hide it while loading and restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
