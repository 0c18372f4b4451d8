"""Which modules get a LoRA, and the kohya key name each one is saved under.

The rules are sd-scripts' (kohya-compat.md §6.1–6.2), because A1111, ComfyUI and diffusers
parse these names:

* U-Net: every ``Linear`` and 1x1 ``Conv2d`` inside a ``Transformer2DModel``; with LoCon
  (``conv_dim`` set) also the children of ``ResnetBlock2D`` / ``Downsample2D`` /
  ``Upsample2D`` (3x3 convs get the conv rank, Linear / 1x1 children the network rank).
* Text encoder: the ``Linear`` children of ``CLIPAttention`` / ``CLIPSdpaAttention`` /
  ``CLIPMLP``.
* Name = ``<prefix>.<module path of the parent>.<child path>`` with every ``.`` turned into
  ``_``. SD 1.x/2.x U-Net paths are diffusers' (``down_blocks_0_attentions_0_...``); SDXL U-Net
  paths are the original SAI layout (``input_blocks_4_1_...``, mapped by
  ``families/sd/unet_layout.py``), because sd-scripts trains SDXL on its own SAI-layout U-Net.
  SDXL's two text encoders get ``lora_te1`` / ``lora_te2``.
  Text-encoder paths are those of transformers 4.x (``text_model.encoder.layers...``)
  whatever version is installed: transformers >= 5.6 dropped the ``text_model`` wrapper, and
  files without the ``text_model_`` segment do not load in A1111 or ComfyUI.

The same targets serve every network type (LoCon, LoHa and LoKr all use the conv set).
LyCORIS' kohya wrapper names modules from the live module paths, so under transformers 5 it
would write ``lora_te_encoder_layers_…`` — one reason these types are implemented here; its
default "full" preset also wraps ``conv_in``, ``conv_out`` and ``time_embedding.linear_1/2``,
which sd-scripts (kohya-compat.md §6.1) and this module leave out.

Nothing here changes a model; it only finds modules and names them. Importing it imports no
torch (the families' naming rules are read by the checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the names (a family's LoraNaming) needs no torch
    from torch import nn

UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

PREFIX_UNET = "lora_unet"
PREFIX_TEXT_ENCODER = "lora_te"
PREFIXES_SDXL_TEXT_ENCODERS = ("lora_te1", "lora_te2")


@dataclass(frozen=True)
class LoraNaming:
    """How sd-scripts' ``networks.lora`` names one SD-family model: the defaults are SD 1.x's
    and SD 2.x's; SDXL's family object holds one with ``numbered_text_encoders`` (``lora_te1``
    / ``lora_te2``) and ``unet_renamer``, which maps the U-Net's diffusers module paths to the
    SAI layout sd-scripts names them in (``families/sd/unet_layout.py``)."""

    numbered_text_encoders: bool = False
    # unet -> (diffusers module path -> the path its LoRA is named after); None: as it is.
    unet_renamer: Callable[[nn.Module], Callable[[str], str]] | None = None

    def text_encoder_prefixes(self, count: int) -> list[str]:
        """Key prefix of each text encoder: ``lora_te`` (SD 1.x/2.x), ``lora_te1/2``
        (SDXL)."""
        if self.numbered_text_encoders:
            return list(PREFIXES_SDXL_TEXT_ENCODERS[:count])
        return [PREFIX_TEXT_ENCODER] * count


SD_NAMING = LoraNaming()


@dataclass(frozen=True)
class Target:
    """One module to wrap: its kohya name, the module, and which rank applies to it."""

    lora_name: str
    module: nn.Module
    is_conv3x3: bool


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}.{module_path}".replace(".", "_")


def text_encoder_path(path: str) -> str:
    """Module path as transformers 4.x names it (with the ``text_model.`` wrapper)."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def _kind(module: nn.Module) -> str | None:
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv1x1" if module.kernel_size == (1, 1) else "conv3x3"
    return None


def find_targets(root: nn.Module, prefix: str, target_classes: tuple[str, ...],
                 include_conv3x3: bool, text_encoder: bool = False,
                 rename: Callable[[str], str] | None = None) -> list[Target]:
    """Every module under ``root`` that sd-scripts' networks.lora would wrap, in model order.

    ``rename`` maps a module path before it becomes a name (SDXL: diffusers → SAI layout).
    """
    targets: list[Target] = []
    seen: set[str] = set()
    for parent_path, parent in root.named_modules():
        if type(parent).__name__ not in target_classes:
            continue
        for child_path, child in parent.named_modules():
            kind = _kind(child)
            if kind is None or (kind == "conv3x3" and not include_conv3x3):
                continue
            path = f"{parent_path}.{child_path}" if child_path else parent_path
            if text_encoder:
                path = text_encoder_path(path)
            if rename is not None:
                path = rename(path)
            name = kohya_name(prefix, path)
            if name in seen:  # a target nested inside another target
                continue
            seen.add(name)
            targets.append(Target(name, child, kind == "conv3x3"))
    return targets


def unet_targets(unet: nn.Module, with_conv: bool, naming: LoraNaming = SD_NAMING
                 ) -> list[Target]:
    """The U-Net's targets, named in the layout ``naming`` says (see the module
    docstring)."""
    classes = UNET_TARGETS + (UNET_CONV_TARGETS if with_conv else ())
    rename = naming.unet_renamer(unet) if naming.unet_renamer is not None else None
    return find_targets(unet, PREFIX_UNET, classes, include_conv3x3=with_conv, rename=rename)


def text_encoder_targets(text_encoder: nn.Module,
                         prefix: str = PREFIX_TEXT_ENCODER) -> list[Target]:
    return find_targets(text_encoder, prefix, TEXT_ENCODER_TARGETS, include_conv3x3=False,
                        text_encoder=True)
