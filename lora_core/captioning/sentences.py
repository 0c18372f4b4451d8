"""What a sentence caption becomes before it is written: the clean-up users otherwise do by
hand (on by default, off with ``--raw``), the ``--replace`` edits, the trigger prefix, and
``--append`` after existing tags. Pure text: no model, no files.

The clean-up, in order:

1. the boilerplate openings in :data:`BOILERPLATE_OPENINGS` are removed from the start,
   ignoring case (repeatedly: "In this image, the image shows a cat" is "a cat"), and the
   first letter of what is left keeps the case the model gave it;
2. a word repeated back to back is written once ("a a woman" is "a woman"; words compare
   ignoring case);
3. runs of white space become one space, and spaces before ``,.;:!?`` go.
"""

from __future__ import annotations

import re

from lora_core.errors import LoraError

# Openings that say nothing about the picture. Longer ones first, so "The image shows" wins
# over "The image". A trailing comma, colon or "that" goes with them.
BOILERPLATE_OPENINGS: tuple[str, ...] = (
    "this is a close-up picture of", "this is a close-up image of",
    "this is a picture of", "this is an image of", "this is a photo of",
    "this is a photograph of", "this image shows", "this image depicts",
    "this picture shows", "this photo shows", "the image shows", "the image depicts",
    "the image features", "the image is of", "the picture shows", "the photo shows",
    "the photograph shows", "in this image", "in this picture", "in this photo",
    "in the image", "in the picture", "in the photo", "an image of", "a picture of",
    "a photo of", "a photograph of", "there is", "there are",
)
_OPENING = re.compile(
    r"^\s*(?:" + "|".join(re.escape(o).replace(r"\ ", r"\s+") for o in BOILERPLATE_OPENINGS)
    + r")\b(?:\s*(?:that\b|,|:))?\s*", re.IGNORECASE)
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)


def clean_sentence(text: str) -> str:
    """The clean-up of the module docstring."""
    text = " ".join(text.split())
    while True:
        shorter = _OPENING.sub("", text, count=1)
        if shorter == text or not shorter:
            break
        text = shorter
    text = _REPEATED_WORD.sub(r"\1", text)
    return re.sub(r"\s+([,.;:!?])", r"\1", text).strip()


def parse_sentence_replacements(items: list[str]) -> list[tuple[re.Pattern, str]]:
    """``--replace "a woman=ohwx woman"``: whole words, ignoring case."""
    pairs = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip():
            raise LoraError(f"--replace {item!r} is not old=new",
                            'e.g. --replace "a woman=ohwx woman"')
        pairs.append((re.compile(r"(?<!\w)" + re.escape(old.strip()) + r"(?!\w)",
                                 re.IGNORECASE), new.strip()))
    return pairs


def replace_words(text: str, pairs: list[tuple[re.Pattern, str]]) -> str:
    for pattern, new in pairs:
        text = pattern.sub(lambda _m, new=new: new, text)
    return " ".join(text.split())


def with_prefix(sentence: str, prefix: str) -> str:
    """The trigger first ("ohwx woman, a woman in a red coat"), once."""
    prefix = prefix.strip().rstrip(",").strip()
    if not prefix or sentence.lower().startswith(prefix.lower()):
        return sentence
    return f"{prefix}, {sentence}" if sentence else prefix


def appended(existing: str | None, sentence: str) -> str:
    """``--append``: the sentence after the existing caption (tags + prose), on each of its
    lines (a file of several lines holds alternative captions); a line that holds the
    sentence already is left as it is."""
    if existing is None or not existing.strip():
        return sentence
    lines = []
    for line in existing.split("\n"):
        body = line.rstrip().rstrip(",").rstrip()
        if not body or sentence in body:
            lines.append(line)
        else:
            lines.append(f"{body}, {sentence}")
    return "\n".join(lines)
