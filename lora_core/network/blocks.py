"""U-Net blocks for block-wise ranks and learning rates (kohya-compat.md §6.5).

sd-scripts numbers an SD 1.x/2.x U-Net in **25 slots** and lets ``block_dims`` /
``block_alphas`` / ``conv_block_dims`` / ``conv_block_alphas`` (25 values each) and
``down_lr_weight`` (12) / ``mid_lr_weight`` (1) / ``up_lr_weight`` (12) address them:

    slot 0        "BASE": no LoRA module maps here (it takes down_lr_weight's first value)
    slot 1 + 3i + j   down_blocks.i.{resnets|attentions}.j      (i 0..3, j 0..1)
    slot 1 + 3i + 2   down_blocks.i.downsamplers                (i 0..2)
    slot 12           mid_block
    slot 13 + 3i + j  up_blocks.i.{resnets|attentions}.j        (i 0..3, j 0..2)
    slot 13 + 3i + 2  up_blocks.i.upsamplers                    (shares the slot of j = 2)

The LR-weight vector is ``down (12) + mid (1) + up (12)``, so slot k uses the k-th value of
that concatenation, exactly as sd-scripts' ``get_block_lr_weight`` builds it (networks/lora.py).

Pure Python: the profile check and the TUI use this without torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lora_core.errors import ProfileError

NUM_BLOCKS_SD = 25
NUM_DOWN_OR_UP = 12  # values in down_lr_weight / up_lr_weight
NUM_MID = 1  # values in mid_lr_weight
MID_SLOT = 12
LR_WEIGHT_PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")

# Same pattern sd-scripts matches (RE_UPDOWN): block kind, block i, part, index j.
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(lora_name: str) -> int | None:
    """The 25-slot index of a U-Net LoRA module name in diffusers naming; None for
    text-encoder modules and for names outside the down/mid/up blocks.

    ``lora_unet_down_blocks_1_attentions_0_proj_in`` → 1 + 3·1 + 0 = 4.
    """
    if not lora_name.startswith("lora_unet_"):
        return None
    match = _UPDOWN.search(lora_name)
    if match:
        kind, i, part, j = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        # A sampler sits after the block's resnets/attentions: the third slot of the block.
        idx = 3 * i + (2 if part in ("upsamplers", "downsamplers") else j)
        return 1 + idx if kind == "down" else NUM_DOWN_OR_UP + 1 + idx
    if "mid_block_" in lora_name:
        return MID_SLOT
    # sd-scripts answers -1 here, which silently indexes the last slot; nothing we target
    # (conv_in, conv_out, time embedding) lies outside the blocks, so say "no block".
    return None


def _number(raw: str, field: str, text: str, integer: bool) -> float:
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "whole numbers" if integer else "numbers"
        raise ProfileError(
            f"`{field}` = {text!r}: {raw.strip()!r} is not a number",
            f"write {kind} separated by commas, like \"1,1,0.5\"") from None


def parse_block_values(text: str, field: str, count: int | None = NUM_BLOCKS_SD,
                       *, integer: bool = False) -> list[float]:
    """Comma-separated numbers; exactly ``count`` of them unless ``count`` is None.

    ``field`` is the qualified name the error names, e.g. ``"[network] block_dims"``.
    """
    values = [_number(raw, field, text, integer) for raw in text.split(",")]
    if count is not None and len(values) != count:
        raise ProfileError(
            f"`{field}` has {len(values)} values; SD 1.x/2.x U-Nets have {count} blocks",
            "give one value per block: BASE, 12 down, mid, 12 up")
    return values


def preset_lr_weights(spec: str, field: str, count: int = NUM_DOWN_OR_UP) -> list[float]:
    """A named LR-weight curve over ``count`` blocks, plus an optional ``+offset``.

    With t_k = k / (count - 1) for k = 0..count-1 (shallow to deep):
    ``sine`` sin(π t/2) (0 → 1), ``cosine`` its reverse (1 → 0), ``linear`` t,
    ``reverse_linear`` 1 - t, ``zeros`` 0; each plus the offset (``cosine+.25``).
    """
    name, plus, raw_offset = spec.strip().partition("+")
    offset = _number(raw_offset, field, spec, integer=False) if plus else 0.0
    steps = [k / (count - 1) for k in range(count)]
    curves = {
        "sine": [math.sin(math.pi * t / 2) for t in steps],
        "cosine": [math.sin(math.pi * t / 2) for t in reversed(steps)],
        "linear": steps,
        "reverse_linear": list(reversed(steps)),
        "zeros": [0.0] * count,
    }
    if name.strip() not in curves:
        raise ProfileError(
            f"`{field}` = {spec!r} is neither a preset nor a list of {count} numbers",
            f"use one of {', '.join(LR_WEIGHT_PRESETS)} (optionally +offset, like "
            "\"cosine+.25\"), or comma-separated numbers")
    return [w + offset for w in curves[name.strip()]]


def _lr_weight_list(text: str, field: str, count: int, presets: bool) -> list[float] | None:
    """One of down/mid/up_lr_weight as ``count`` values, or None when empty."""
    text = text.strip()
    if not text:
        return None
    if presets and "," not in text:
        # sd-scripts reads a comma-free down/up value as a preset name (and ignores a single
        # number with an error log); a lone number is ambiguous, so it is an error here.
        return preset_lr_weights(text, field, count)
    # sd-scripts: "if some parameters are not set, use zero", so "1,,1" is 1, 0, 1.
    values = [_number(raw, field, text, integer=False) if raw.strip() else 0.0
              for raw in text.split(",")]
    # Too long: the tail is ignored; too short: the missing blocks keep weight 1.
    return (values + [1.0] * count)[:count]


def block_lr_weights(down: str, mid: str, up: str, zero_threshold: float
                     ) -> list[float] | None:
    """The 25 per-slot learning-rate multipliers; None when all three strings are empty.

    ``down`` / ``up``: 12 values (or a preset); ``mid``: 1 value. A part left empty is all
    1.0. Given values at or below ``zero_threshold`` become 0 — such blocks are not trained
    (sd-scripts also creates no LoRA module there, see ``block_dims_and_alphas``).
    """
    parts = [_lr_weight_list(down, "[optimizer] down_lr_weight", NUM_DOWN_OR_UP, True),
             _lr_weight_list(mid, "[optimizer] mid_lr_weight", NUM_MID, False),
             _lr_weight_list(up, "[optimizer] up_lr_weight", NUM_DOWN_OR_UP, True)]
    if all(p is None for p in parts):
        return None
    weights: list[float] = []
    for part, size in zip(parts, (NUM_DOWN_OR_UP, NUM_MID, NUM_DOWN_OR_UP), strict=True):
        if part is None:
            weights += [1.0] * size  # not thresholded: sd-scripts fills defaults afterwards
        else:
            weights += [w if w > zero_threshold else 0.0 for w in part]
    return weights


@dataclass(frozen=True)
class BlockShape:
    """Per-slot (25) rank and alpha for Linear / 1x1-conv modules and for 3x3 convs.

    A rank of 0 means "no LoRA module in this block". ``conv_dims`` is None when no 3x3
    convolution gets a module.
    """

    dims: list[int]
    alphas: list[float]
    conv_dims: list[int] | None
    conv_alphas: list[float] | None

    def for_module(self, lora_name: str, is_conv3x3: bool) -> tuple[int, float] | None:
        """(rank, alpha) for one U-Net module, or None when it gets no module."""
        slot = block_index(lora_name)
        if slot is None:
            return None
        if is_conv3x3:
            if self.conv_dims is None or self.conv_alphas is None or not self.conv_dims[slot]:
                return None
            return self.conv_dims[slot], self.conv_alphas[slot]
        if not self.dims[slot]:
            return None
        return self.dims[slot], self.alphas[slot]


def block_dims_and_alphas(block_dims: str, block_alphas: str, conv_block_dims: str,
                          conv_block_alphas: str, network_dim: int, network_alpha: float,
                          conv_dim: int | None, conv_alpha: float | None,
                          lr_weights: list[float] | None = None) -> BlockShape | None:
    """Per-block ranks/alphas from the ``[network]`` fields, with sd-scripts' defaults
    (``get_block_dims_and_alphas`` + ``remove_block_dims_and_alphas``):

    * block mode is on when ``block_dims`` or block LR weights are set; else None;
    * ``block_dims`` empty → ``network_dim`` everywhere; ``block_alphas`` empty →
      ``network_alpha``;
    * ``conv_block_dims`` given → those, with ``conv_block_alphas`` or else ``conv_alpha``
      (1.0 when unset); not given → ``conv_dim`` / ``conv_alpha`` everywhere when
      ``conv_dim`` is set, otherwise no 3x3-conv modules;
    * a slot whose LR weight is 0 gets rank 0 (no module) in both lists.

    ``conv_dim`` / ``conv_alpha`` are the values in effect (after the network type's defaults).
    """
    if not block_dims and lr_weights is None:
        return None
    dims = ([int(v) for v in parse_block_values(block_dims, "[network] block_dims",
                                                 integer=True)]
            if block_dims else [network_dim] * NUM_BLOCKS_SD)
    alphas = (parse_block_values(block_alphas, "[network] block_alphas") if block_alphas
              else [float(network_alpha)] * NUM_BLOCKS_SD)
    conv_dims: list[int] | None
    conv_alphas: list[float] | None
    if conv_block_dims:
        conv_dims = [int(v) for v in parse_block_values(
            conv_block_dims, "[network] conv_block_dims", integer=True)]
        conv_alphas = (parse_block_values(conv_block_alphas, "[network] conv_block_alphas")
                       if conv_block_alphas
                       else [1.0 if conv_alpha is None else float(conv_alpha)] * NUM_BLOCKS_SD)
    elif conv_dim is not None:
        conv_dims = [conv_dim] * NUM_BLOCKS_SD
        conv_alphas = [1.0 if conv_alpha is None else float(conv_alpha)] * NUM_BLOCKS_SD
    else:
        conv_dims = conv_alphas = None
    if lr_weights is not None:
        for slot, weight in enumerate(lr_weights):
            if weight == 0:
                dims[slot] = 0
                if conv_dims is not None:
                    conv_dims[slot] = 0
    return BlockShape(dims, alphas, conv_dims, conv_alphas)
