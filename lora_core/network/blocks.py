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

An SDXL U-Net (LoRA names in the original ``input_blocks`` layout) has **23 slots**, and
``down_lr_weight`` / ``up_lr_weight`` take 9 values, ``mid_lr_weight`` 3:

    slot 0            time / label embedding (no LoRA module)
    slot 1 + N        input_blocks.N                            (N 0..8)
    slot 10 + N       middle_block.N                            (N 0..2)
    slot 13 + N       output_blocks.N                           (N 0..8)
    slot 22           out (no LoRA module)

and the LR-weight vector is ``1.0 + down (9) + mid (3) + up (9) + 1.0`` (sd-scripts pads the
two module-less ends). :class:`BlockLayout` carries these numbers; :func:`block_index` tells
the layouts apart by the name itself.

Pure Python: the profile check and the TUI use this without torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from lora_core.errors import ProfileError

NUM_BLOCKS_SD = 25
NUM_DOWN_OR_UP = 12  # values in down_lr_weight / up_lr_weight
NUM_MID = 1  # values in mid_lr_weight
MID_SLOT = 12
LR_WEIGHT_PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")


@dataclass(frozen=True)
class BlockLayout:
    """How many block slots a U-Net family has and how the LR-weight lists map onto them."""

    name: str
    num_blocks: int  # block_dims / block_alphas values
    num_down_or_up: int  # down_lr_weight / up_lr_weight values
    num_mid: int  # mid_lr_weight values
    padded_ends: bool  # SDXL: a 1.0 before down and after up for the module-less slots
    order: str  # for error hints: what the block values stand for, in order


SD_BLOCKS = BlockLayout("SD 1.x/2.x", NUM_BLOCKS_SD, NUM_DOWN_OR_UP, NUM_MID, False,
                        "BASE, 12 down, mid, 12 up")
SDXL_BLOCKS = BlockLayout("SDXL", 23, 9, 3, True,
                          "embedding, 9 input, 3 middle, 9 output, out")


# Same pattern sd-scripts matches (RE_UPDOWN): block kind, block i, part, index j.
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
# SDXL names (original layout), as sd-scripts' get_block_index(is_sdxl=True) reads them.
_SAI_BLOCK = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")
_SAI_FIRST_SLOT = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}


def block_index(lora_name: str) -> int | None:
    """The block slot of a U-Net LoRA module name; None for text-encoder modules and for
    names outside the blocks.

    Diffusers naming (SD 1.x/2.x, 25 slots): ``lora_unet_down_blocks_1_attentions_0_proj_in``
    → 1 + 3·1 + 0 = 4. Original naming (SDXL, 23 slots):
    ``lora_unet_input_blocks_4_1_proj_in`` → 1 + 4 = 5, ``lora_unet_middle_block_1_...`` →
    11, ``lora_unet_output_blocks_2_2_conv`` → 15.
    """
    if not lora_name.startswith("lora_unet_"):
        return None
    sai = _SAI_BLOCK.match(lora_name)
    if sai:
        return _SAI_FIRST_SLOT[sai.group(1)] + int(sai.group(2))
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
                       *, integer: bool = False, layout: BlockLayout = SD_BLOCKS
                       ) -> list[float]:
    """Comma-separated numbers; exactly ``count`` of them unless ``count`` is None.

    ``field`` is the qualified name the error names, e.g. ``"[network] block_dims"``.
    ``layout`` names the U-Net in the error (its ``num_blocks`` is the usual ``count``).
    """
    values = [_number(raw, field, text, integer) for raw in text.split(",")]
    if count is not None and len(values) != count:
        raise ProfileError(
            f"`{field}` has {len(values)} values; {layout.name} U-Nets have {count} blocks",
            f"give one value per block: {layout.order}")
    return values


def preset_lr_weights(spec: str, field: str, count: int = NUM_DOWN_OR_UP) -> list[float]:
    """A named LR-weight curve over ``count`` blocks, plus an optional ``+offset``.

    With t_k = k / (count - 1) for k = 0..count-1 (shallow to deep):
    ``sine`` sin(π t/2) (0 → 1), ``cosine`` its reverse (1 → 0), ``linear`` t,
    ``reverse_linear`` 1 - t, ``zeros`` 0; each plus the offset (``cosine+.25``).
    """
    return _preset_curve(*_parse_preset(spec, field), count)


def _parse_preset(spec: str, field: str) -> tuple[str, float]:
    """(preset name, offset) of ``cosine+.25``; a ProfileError naming ``field`` otherwise."""
    name, plus, raw_offset = spec.strip().partition("+")
    offset = _number(raw_offset, field, spec, integer=False) if plus else 0.0
    if name.strip() not in LR_WEIGHT_PRESETS:
        raise ProfileError(
            f"`{field}` = {spec!r} is neither a preset nor a list of numbers (one per block)",
            f"use one of {', '.join(LR_WEIGHT_PRESETS)} (optionally +offset, like "
            "\"cosine+.25\"), or comma-separated numbers")
    return name.strip(), offset


def _preset_curve(name: str, offset: float, count: int) -> list[float]:
    steps = [k / (count - 1) for k in range(count)]
    curves = {
        "sine": [math.sin(math.pi * t / 2) for t in steps],
        "cosine": [math.sin(math.pi * t / 2) for t in reversed(steps)],
        "linear": steps,
        "reverse_linear": list(reversed(steps)),
        "zeros": [0.0] * count,
    }
    return [w + offset for w in curves[name]]


@dataclass(frozen=True)
class LrWeightPart:
    """One of down/mid/up_lr_weight as written, parsed: a preset (``name`` + ``offset``) or
    the numbers given (``values``), before it is laid over a family's blocks."""

    values: tuple[float, ...] = ()
    name: str = ""
    offset: float = 0.0

    def over(self, count: int) -> list[float]:
        """``count`` values: the preset's curve, or the numbers given (too many: the tail
        is ignored; too few: the missing blocks keep weight 1, as in sd-scripts)."""
        if self.name:
            return _preset_curve(self.name, self.offset, count)
        return (list(self.values) + [1.0] * count)[:count]


def _lr_weight_part(text: str, field: str, presets: bool) -> LrWeightPart | None:
    """One of down/mid/up_lr_weight parsed, or None when empty."""
    text = text.strip()
    if not text:
        return None
    if presets and "," not in text:
        # sd-scripts reads a comma-free down/up value as a preset name (and ignores a single
        # number with an error log); a lone number is ambiguous, so it is an error here.
        name, offset = _parse_preset(text, field)
        return LrWeightPart(name=name, offset=offset)
    # sd-scripts: "if some parameters are not set, use zero", so "1,,1" is 1, 0, 1.
    return LrWeightPart(tuple(_number(raw, field, text, integer=False) if raw.strip() else 0.0
                              for raw in text.split(",")))


@dataclass(frozen=True)
class BlockLrWeights:
    """``[optimizer] down_lr_weight / mid_lr_weight / up_lr_weight`` parsed once, in a form
    no model family shapes yet (:func:`parse_block_lr_weights`); :meth:`for_layout` lays them
    over a family's block slots once the family is known."""

    down: LrWeightPart | None
    mid: LrWeightPart | None
    up: LrWeightPart | None
    zero_threshold: float

    def for_layout(self, layout: BlockLayout = SD_BLOCKS) -> list[float]:
        """The per-slot multipliers (25, SDXL 23). A part left empty is all 1.0. Given
        values at or below ``zero_threshold`` become 0 — such blocks are not trained
        (sd-scripts also creates no LoRA module there, see ``block_dims_and_alphas``).
        SDXL's two module-less end slots get 1.0."""
        side, middle = layout.num_down_or_up, layout.num_mid
        weights: list[float] = []
        for part, size in zip((self.down, self.mid, self.up), (side, middle, side),
                              strict=True):
            if part is None:
                weights += [1.0] * size  # not thresholded: sd-scripts fills defaults afterwards
            else:
                weights += [w if w > self.zero_threshold else 0.0 for w in part.over(size)]
        return [1.0, *weights, 1.0] if layout.padded_ends else weights


@lru_cache(maxsize=32)
def parse_block_lr_weights(down: str, mid: str, up: str,
                           zero_threshold: float) -> BlockLrWeights | None:
    """The block learning-rate weights, parsed once per distinct value (the profile check
    parses them when the profile is read; the run's later asks are answered from this);
    None when all three strings are empty. A ProfileError names the field."""
    parts = (_lr_weight_part(down, "[optimizer] down_lr_weight", True),
             _lr_weight_part(mid, "[optimizer] mid_lr_weight", False),
             _lr_weight_part(up, "[optimizer] up_lr_weight", True))
    if all(p is None for p in parts):
        return None
    return BlockLrWeights(*parts, zero_threshold)


def block_lr_weights(down: str, mid: str, up: str, zero_threshold: float,
                     layout: BlockLayout = SD_BLOCKS) -> list[float] | None:
    """The per-slot learning-rate multipliers (25, SDXL 23); None when all three strings
    are empty: :func:`parse_block_lr_weights` laid over ``layout``.

    ``down`` / ``up``: 12 values (SDXL 9) or a preset; ``mid``: 1 value (SDXL 3).
    """
    parsed = parse_block_lr_weights(down, mid, up, zero_threshold)
    return None if parsed is None else parsed.for_layout(layout)


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
                          lr_weights: list[float] | None = None,
                          layout: BlockLayout = SD_BLOCKS) -> BlockShape | None:
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
    ``layout``: 25 slots for SD 1.x/2.x, 23 for SDXL.
    """
    if not block_dims and lr_weights is None:
        return None
    count = layout.num_blocks

    def values(text: str, field: str, integer: bool = False) -> list[float]:
        return parse_block_values(text, f"[network] {field}", count, integer=integer,
                                  layout=layout)

    dims = ([int(v) for v in values(block_dims, "block_dims", integer=True)]
            if block_dims else [network_dim] * count)
    alphas = (values(block_alphas, "block_alphas") if block_alphas
              else [float(network_alpha)] * count)
    conv_dims: list[int] | None
    conv_alphas: list[float] | None
    if conv_block_dims:
        conv_dims = [int(v) for v in values(conv_block_dims, "conv_block_dims", integer=True)]
        conv_alphas = (values(conv_block_alphas, "conv_block_alphas") if conv_block_alphas
                       else [1.0 if conv_alpha is None else float(conv_alpha)] * count)
    elif conv_dim is not None:
        conv_dims = [conv_dim] * count
        conv_alphas = [1.0 if conv_alpha is None else float(conv_alpha)] * count
    else:
        conv_dims = conv_alphas = None
    if lr_weights is not None:
        for slot, weight in enumerate(lr_weights):
            if weight == 0:
                dims[slot] = 0
                if conv_dims is not None:
                    conv_dims[slot] = 0
    return BlockShape(dims, alphas, conv_dims, conv_alphas)
