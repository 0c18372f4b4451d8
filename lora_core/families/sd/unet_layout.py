"""The two names of every U-Net module: diffusers' and the original LDM / SAI layout.

Checkpoints from A1111 / ComfyUI (``model.diffusion_model.*``) and SDXL LoRA keys
(``lora_unet_input_blocks_4_1_...``, kohya-compat.md §6.2) use the layout of the original
latent-diffusion / SAI ``generative-models`` code; diffusers' ``UNet2DConditionModel`` names
the same modules differently. This module maps one to the other, driven only by the U-Net
config (a diffusers ``config.json`` as a dict), so SD 1.x, SD 2.x and SDXL are all instances of
one rule rather than three tables:

* Let ``n = layers_per_block`` and let level ``i`` run over ``block_out_channels``.
  ``input_blocks.0.0`` is ``conv_in``; down level ``i`` then occupies
  ``input_blocks.1 + i(n+1) ... 1 + i(n+1) + n``: slot ``j < n`` holds resnet ``j`` (sub-module
  ``0``) and, on levels with cross-attention, attention ``j`` (sub-module ``1``); slot ``n``
  holds the downsampler (``.0.op``), absent on the last level.
* ``middle_block.0`` / ``.1`` / ``.2`` are mid resnet 0, the mid attention, mid resnet 1.
* Up level ``i`` occupies ``output_blocks.i(n+1) ... i(n+1) + n`` (up levels have ``n + 1``
  resnets): resnet ``j`` is sub-module ``0``, attention ``j`` sub-module ``1``; the upsampler
  rides in the last slot as sub-module ``2`` on attention levels and ``1`` otherwise
  (``.conv``), absent on the last up level.
* Inside a resnet: ``norm1 → in_layers.0``, ``conv1 → in_layers.2``,
  ``time_emb_proj → emb_layers.1``, ``norm2 → out_layers.0``, ``conv2 → out_layers.3``,
  ``conv_shortcut → skip_connection``. Inside a transformer nothing is renamed.
* ``time_embedding.linear_1/2 → time_embed.0/2``, ``add_embedding.linear_1/2 →
  label_emb.0.0/0.2`` (SDXL), ``conv_norm_out → out.0``, ``conv_out → out.2``.

Facts checked against sd-scripts' ``library/sdxl_model_util.py`` and diffusers'
``convert_ldm_unet_checkpoint``; the code is written from the rule above. Paths may be
module paths or parameter keys (a trailing ``.weight`` / ``.bias`` passes through). Pure
Python: no torch, so the test helper and the key-name code can use it anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lora_core.errors import ModelError

_RESNET_TO_ORIGINAL = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_ORIGINAL.items()}

_TOP_LEVEL_TO_ORIGINAL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_TOP_LEVEL_TO_DIFFUSERS = {v: k for k, v in _TOP_LEVEL_TO_ORIGINAL.items()}


@dataclass(frozen=True)
class UNetLayout:
    """The shape facts the mapping needs, read from a diffusers U-Net config."""

    layers_per_block: int
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]

    @property
    def num_levels(self) -> int:
        return len(self.down_attention)

    @classmethod
    def from_config(cls, config: Mapping) -> UNetLayout:
        lpb = config.get("layers_per_block", 2)
        if not isinstance(lpb, int):
            values = set(lpb)
            if len(values) != 1:
                raise ModelError(
                    f"U-Net config has per-level layers_per_block {list(lpb)}",
                    "only U-Nets with the same number of layers on every level "
                    "(SD 1.x, SD 2.x, SDXL) have an original-layout equivalent")
            lpb = values.pop()
        down = tuple("CrossAttn" in t for t in config.get("down_block_types", ()))
        up = tuple("CrossAttn" in t for t in config.get("up_block_types", ()))
        if not down or len(down) != len(up):
            raise ModelError(
                "U-Net config needs down_block_types and up_block_types of equal length",
                "pass the U-Net's diffusers config (unet/config.json) as a dict")
        return cls(int(lpb), down, up)


def _split(path: str, head_parts: int) -> tuple[list[str], str]:
    parts = path.split(".")
    return parts[:head_parts], ".".join(parts[head_parts:])


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _rename_first(rest: str, table: Mapping[str, str], two_parts: bool = False) -> str:
    """Rename the leading component(s) of ``rest`` with ``table`` (resnet children)."""
    parts = rest.split(".") if rest else []
    if two_parts and len(parts) >= 2 and f"{parts[0]}.{parts[1]}" in table:
        return _join(table[f"{parts[0]}.{parts[1]}"], ".".join(parts[2:]))
    if parts and parts[0] in table:
        return _join(table[parts[0]], ".".join(parts[1:]))
    return rest


def _top_level(path: str, table: Mapping[str, str]) -> str | None:
    for prefix, target in table.items():
        if path == prefix or path.startswith(prefix + "."):
            return target + path[len(prefix):]
    return None


def _bad(path: str, why: str) -> ModelError:
    return ModelError(f"U-Net module path {path!r} has no counterpart: {why}",
                      "check that the path and the U-Net config belong to the same model")


def _int(text: str, path: str) -> int:
    if not text.isdigit():
        raise _bad(path, f"expected a block number, found {text!r}")
    return int(text)


def diffusers_to_original(path: str, config: Mapping | UNetLayout) -> str:
    """Map a diffusers U-Net path (``down_blocks.1.attentions.0.proj_in``) to the original
    layout (``input_blocks.4.1.proj_in``)."""
    layout = config if isinstance(config, UNetLayout) else UNetLayout.from_config(config)
    n = layout.layers_per_block
    top = _top_level(path, _TOP_LEVEL_TO_ORIGINAL)
    if top is not None:
        return top
    parts = path.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        level, kind, j = _int(parts[1], path), parts[2], _int(parts[3], path)
        rest = ".".join(parts[4:])
        if level >= layout.num_levels:
            raise _bad(path, f"the config has {layout.num_levels} levels")
        if parts[0] == "down_blocks":
            base = 1 + level * (n + 1)
            if kind == "resnets" and j < n:
                return _join(f"input_blocks.{base + j}.0",
                             _rename_first(rest, _RESNET_TO_ORIGINAL))
            if kind == "attentions" and j < n and layout.down_attention[level]:
                return _join(f"input_blocks.{base + j}.1", rest)
            if kind == "downsamplers" and j == 0 and level < layout.num_levels - 1:
                return _join(f"input_blocks.{base + n}.0", _rename_first(rest, {"conv": "op"}))
        else:
            base = level * (n + 1)
            if kind == "resnets" and j <= n:
                return _join(f"output_blocks.{base + j}.0",
                             _rename_first(rest, _RESNET_TO_ORIGINAL))
            if kind == "attentions" and j <= n and layout.up_attention[level]:
                return _join(f"output_blocks.{base + j}.1", rest)
            if kind == "upsamplers" and j == 0 and level < layout.num_levels - 1:
                sub = 2 if layout.up_attention[level] else 1
                return _join(f"output_blocks.{base + n}.{sub}", rest)
        raise _bad(path, f"no {kind}.{j} on {parts[0]}.{level} for this config")
    if parts[0] == "mid_block" and len(parts) >= 3:
        kind, j, rest = parts[1], _int(parts[2], path), ".".join(parts[3:])
        if kind == "resnets" and j in (0, 1):
            return _join(f"middle_block.{2 * j}", _rename_first(rest, _RESNET_TO_ORIGINAL))
        if kind == "attentions" and j == 0:
            return _join("middle_block.1", rest)
    raise _bad(path, "not a U-Net block path")


def original_to_diffusers(path: str, config: Mapping | UNetLayout) -> str:
    """Inverse of :func:`diffusers_to_original` (``output_blocks.2.2.conv`` →
    ``up_blocks.0.upsamplers.0.conv`` for SDXL)."""
    layout = config if isinstance(config, UNetLayout) else UNetLayout.from_config(config)
    n = layout.layers_per_block
    if path.startswith("input_blocks.0.0"):
        return "conv_in" + path[len("input_blocks.0.0"):]
    top = _top_level(path, _TOP_LEVEL_TO_DIFFUSERS)
    if top is not None:
        return top
    parts = path.split(".")
    if parts[0] in ("input_blocks", "output_blocks") and len(parts) >= 3:
        index, sub, rest = _int(parts[1], path), _int(parts[2], path), ".".join(parts[3:])
        if parts[0] == "input_blocks":
            level, j = divmod(index - 1, n + 1)
            if level < layout.num_levels and index >= 1:
                if j < n and sub == 0:
                    return _join(f"down_blocks.{level}.resnets.{j}",
                                 _rename_first(rest, _RESNET_TO_DIFFUSERS, two_parts=True))
                if j < n and sub == 1 and layout.down_attention[level]:
                    return _join(f"down_blocks.{level}.attentions.{j}", rest)
                if j == n and sub == 0 and level < layout.num_levels - 1:
                    return _join(f"down_blocks.{level}.downsamplers.0",
                                 _rename_first(rest, {"op": "conv"}))
        else:
            level, j = divmod(index, n + 1)
            if level < layout.num_levels:
                has_attention = layout.up_attention[level]
                up_sub = 2 if has_attention else 1
                if sub == 0:
                    return _join(f"up_blocks.{level}.resnets.{j}",
                                 _rename_first(rest, _RESNET_TO_DIFFUSERS, two_parts=True))
                if j == n and sub == up_sub and level < layout.num_levels - 1:
                    return _join(f"up_blocks.{level}.upsamplers.0", rest)
                if sub == 1 and has_attention:
                    return _join(f"up_blocks.{level}.attentions.{j}", rest)
        raise _bad(path, f"no {parts[0]}.{index}.{sub} for this config")
    if parts[0] == "middle_block" and len(parts) >= 2:
        sub, rest = _int(parts[1], path), ".".join(parts[2:])
        if sub in (0, 2):
            return _join(f"mid_block.resnets.{sub // 2}",
                         _rename_first(rest, _RESNET_TO_DIFFUSERS, two_parts=True))
        if sub == 1:
            return _join("mid_block.attentions.0", rest)
    raise _bad(path, "not an original-layout U-Net path")


def state_dict_to_original(state_dict: Mapping, config: Mapping) -> dict:
    """A diffusers U-Net state dict re-keyed to the original layout (values untouched)."""
    layout = UNetLayout.from_config(config)
    return {diffusers_to_original(k, layout): v for k, v in state_dict.items()}


def state_dict_to_diffusers(state_dict: Mapping, config: Mapping) -> dict:
    """An original-layout U-Net state dict (prefix already stripped) re-keyed for diffusers."""
    layout = UNetLayout.from_config(config)
    return {original_to_diffusers(k, layout): v for k, v in state_dict.items()}


def sai_renamer(unet: Any) -> Callable[[str], str]:
    """For SDXL's LoRA names: a diffusers module path of this U-Net -> its SAI-layout path
    (``LoraNaming.unet_renamer``)."""
    layout = UNetLayout.from_config(unet.config)

    def rename(path: str) -> str:
        return diffusers_to_original(path, layout)

    return rename
