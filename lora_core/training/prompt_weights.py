"""Weighted captions (``[dataset] weighted_captions``): ``(word:1.2)`` in a caption scales
that word's text embedding, as sd-scripts' ``--weighted_captions`` does.

The syntax is A1111's (sd-scripts' ``parse_prompt_attention``): ``(text)`` multiplies the
weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:w)`` multiplies it by
``w``; brackets nest; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; an
unclosed bracket applies to the end. The brackets and weights are not trained as text.

Each piece of text is tokenized on its own (without BOS/EOS) and every token takes the
piece's weight; the ids are cut to ``max_token_length`` and laid out as the plain tokenizer
does (``[BOS] tokens [EOS] [PAD]…``, then windows for 150 / 225). After encoding, each
position's hidden state is multiplied by its weight (BOS, EOS and padding by 1), for each
text encoder's part of the states separately (sd-scripts' ``encode_tokens_with_weights``);
SDXL's pooled embedding is left as it is. Pure torch on top of the family's encoder.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.models.clip_text import split_into_windows, window_count

# sd-scripts' TokenizeStrategy._re_attention (from A1111).
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:",
                        re.X)
ROUND, SQUARE = 1.1, 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``text`` as (piece, weight) pairs, runs of equal weight merged.

    >>> parse_prompt_attention("a (house:1.3) [on] a hill")
    [('a ', 1.0), ('house', 1.3), (' ', 1.0), ('on', 0.9090909090909091), (' a hill', 1.0)]
    """
    pieces: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            pieces.append([token, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not pieces:
        return [("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(piece, float(weight)) for piece, weight in merged]


def weighted_ids(tokenizer: Any, caption: str, max_token_length: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights), each ``(max_token_length + 2,)``: the caption's tokens with the
    weight of the piece each came from, laid out as the plain tokenizer lays them out."""
    tokens: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_prompt_attention(caption):
        ids = tokenizer(piece).input_ids[1:-1]  # without BOS / EOS
        tokens += ids
        weights += [weight] * len(ids)
        if len(tokens) > max_token_length:
            break
    tokens, weights = tokens[:max_token_length], weights[:max_token_length]
    pad = max_token_length - len(tokens)
    ids = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    return (torch.tensor(ids, dtype=torch.long),
            torch.tensor([1.0, *weights, 1.0] + [1.0] * pad, dtype=torch.float32))


def encode_weighted(bundle: ModelBundle, captions: list[str], device: torch.device
                    ) -> TextConditioning:
    """The conditioning of ``captions`` with their prompt weights applied."""
    max_token_length = bundle.text.max_token_length
    ids_list, weights_list = [], []
    for tokenizer in bundle.tokenizers:
        pairs = [weighted_ids(tokenizer, caption, max_token_length) for caption in captions]
        ids = torch.stack([ids for ids, _ in pairs])
        n = window_count(tokenizer, max_token_length)
        ids_list.append((ids if n == 1 else split_into_windows(ids, tokenizer, n)).to(device))
        weights_list.append(torch.stack([weights for _, weights in pairs]))
    cond = bundle.impl.encode(bundle, ids_list)
    return dataclasses.replace(cond, hidden=apply_weights(cond.hidden, weights_list, [
        int(encoder.config.hidden_size) for encoder in bundle.text_encoders]))


def apply_weights(hidden: torch.Tensor, weights_list: list[torch.Tensor],
                  widths: list[int]) -> torch.Tensor:
    """``hidden`` (B, T, Σ widths) with each encoder's feature slice multiplied by that
    encoder's per-position weights (B, T)."""
    if len(weights_list) == 1:
        return hidden * weights_list[0].to(hidden.device, hidden.dtype).unsqueeze(-1)
    parts, start = [], 0
    for weights, width in zip(weights_list, widths, strict=True):
        part = hidden[..., start:start + width]
        parts.append(part * weights.to(hidden.device, hidden.dtype).unsqueeze(-1))
        start += width
    return torch.cat(parts, dim=-1)
