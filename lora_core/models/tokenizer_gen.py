"""Generate a small, valid CLIP BPE tokenizer folder from code, with no download.

The built-in tiny models need a tokenizer, and tests must never touch the network. A CLIP
tokenizer is fully described by ``vocab.json`` and ``merges.txt``:

* the 256 byte-level characters of the GPT-2/CLIP byte-to-unicode table, then each of them
  again with the ``</w>`` end-of-word suffix (CLIP's order, so ids 0-511 mean the same as in
  the real tokenizer);
* the result of every merge in ``merges.txt``, in merge order;
* ``<|startoftext|>`` and ``<|endoftext|>`` last.

The merges are learned here by plain byte-pair encoding (Sennrich et al. 2016,
https://arxiv.org/abs/1508.07909) over a fixed list of English and tag words, until every word
in the list is one token, so "photo", "woman", "red" and "hair" encode as single tokens like
they do in the real CLIP vocabulary. Ties are broken by the pair's text, so the output is the
same on every run and machine. Any text still encodes: unknown words fall back to byte-level
pieces.

This module is pure Python (no torch, no transformers) and writes files only where told.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77

# Words seen in captions and prompts. Letters only: CLIP's pre-tokenizer splits digits and
# punctuation into their own pieces, so "1girl" is "1" + "girl".
WORDS: tuple[str, ...] = (
    # function words
    "a", "an", "the", "of", "with", "in", "on", "at", "and", "by", "for", "from", "to", "is",
    "her", "his", "their", "wearing", "very", "no", "behind", "front", "side", "view",
    # people
    "woman", "man", "girl", "boy", "person", "people", "child", "face", "portrait", "solo",
    "smile", "smiling", "looking", "viewer", "eyes", "hair", "long", "short", "open", "mouth",
    "closed", "blush", "hand", "hands", "arms", "body", "upper", "full", "head", "lips",
    "standing", "sitting", "walking", "holding", "lying", "pose",
    # colours
    "red", "blue", "green", "yellow", "black", "white", "brown", "blonde", "pink", "purple",
    "orange", "grey", "gray", "silver", "gold", "golden", "dark", "light", "bright", "pale",
    # clothing
    "dress", "shirt", "skirt", "jacket", "coat", "hat", "glasses", "shoes", "boots", "gloves",
    "uniform", "suit", "tie", "ribbon", "bow", "earrings", "necklace", "hood", "scarf",
    # photo and art words
    "photo", "photograph", "picture", "image", "camera", "lens", "bokeh", "depth", "field",
    "sharp", "focus", "blurry", "lighting", "shadow", "shadows", "cinematic", "studio",
    "realistic", "photorealistic", "detailed", "highly", "best", "quality", "masterpiece",
    "high", "resolution", "low", "worst", "jpeg", "artifacts", "ugly", "bad", "anatomy",
    "art", "style", "anime", "manga", "painting", "drawing", "sketch", "illustration",
    "digital", "oil", "watercolor", "pencil", "render", "concept", "character", "design",
    "simple", "background", "scene", "close", "up", "shot", "wide", "angle",
    # things and places
    "cat", "dog", "bird", "horse", "animal", "flower", "flowers", "tree", "trees", "forest",
    "grass", "sky", "cloud", "clouds", "sun", "moon", "star", "stars", "rain", "snow",
    "water", "sea", "ocean", "beach", "river", "lake", "mountain", "mountains", "city",
    "street", "road", "building", "house", "room", "window", "door", "table", "chair",
    "car", "book", "cup", "food", "fire", "night", "day", "morning", "evening", "sunset",
    "outdoors", "indoors", "garden", "park", "castle", "space",
    # adjectives
    "small", "large", "big", "old", "young", "new", "beautiful", "cute", "happy", "sad",
    "tall", "little", "soft", "warm", "cold", "wet", "smooth", "round", "blank", "empty",
)


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP byte-to-character table: printable bytes map to themselves, the rest to
    unused code points from 256 up, so every byte is one visible, non-space character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_code)
            next_code += 1
    # CLIP's vocabulary lists the printable bytes first, then the remapped ones.
    order = printable + [b for b in range(256) if b not in printable]
    return {b: table[b] for b in order}


def _word_symbols(word: str, byte_chars: dict[int, str]) -> tuple[str, ...]:
    chars = [byte_chars[b] for b in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return tuple(chars)


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Merge every occurrence of ``pair``, left to right, as the BPE encoder does."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is a single token; deterministic.

    Each step merges the most frequent adjacent pair (ties: the smallest pair text). Because the
    encoder applies merges in the same rank order, each listed word encodes to one token.
    """
    byte_chars = bytes_to_unicode()
    for word in words:
        if not word.isalpha() or word != word.lower():
            raise ValueError(f"tokenizer word list entry {word!r} must be lowercase letters")
    corpus = {w: _word_symbols(w, byte_chars) for w in dict.fromkeys(words)}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in corpus.values():
            counts.update(pairwise(symbols))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        corpus = {w: _merge_word(s, pair) for w, s in corpus.items()}


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes + ``</w>``, merge results, then the two specials."""
    base = list(bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        # Two different merges can build the same string; it keeps its first id.
        vocab.setdefault(token, len(vocab))
    return vocab


def tokenizer_config() -> dict[str, object]:
    """The tokenizer_config.json of an SD1 (CLIP ViT-L/14) tokenizer, with our length limit."""
    return {
        "add_prefix_space": False,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": EOS_TOKEN,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS_TOKEN,
    }


def write_tokenizer(folder: Path, words: tuple[str, ...] = WORDS) -> int:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into
    ``folder`` (created if needed) and return the vocabulary size.

    Load the result with ``CLIPTokenizer.from_pretrained(folder, model_max_length=77)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words)
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=None), encoding="utf-8"
    )
    # The first line is a header: every CLIP reader skips it.
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
               "unk_token": EOS_TOKEN}
    (folder / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return len(vocab)
