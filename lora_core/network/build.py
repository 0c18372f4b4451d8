"""Building the network the profile's ``[network]`` section asks for.

Which layers get a module is sd-scripts' rule (naming.py): attention/MLP layers always,
3x3 convolutions (and the Linear / 1x1 layers of ResNet and sampler blocks) when the type
trains convolutions. Each module's rank and alpha:

* text encoders: ``network_dim`` / ``network_alpha``;
* U-Net Linear and 1x1 layers: ``network_dim`` / ``network_alpha``, or per block from
  ``block_dims`` / ``block_alphas`` (LoRA, LoCon);
* U-Net 3x3 convolutions: the conv rank and alpha of :func:`conv_rank_and_alpha`, or per
  block from ``conv_block_dims`` / ``conv_block_alphas``;
* a block whose rank is 0, or whose learning-rate weight is 0, gets no module at all
  (sd-scripts' ``remove_block_dims_and_alphas``, kohya-compat.md §6.5).

The module type is LoRAModule (LoRA, LoCon), LoHaModule or LoKrModule. Nothing here trains
or reads files.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from lora_core.errors import ProfileError
from lora_core.network.adapter import AdapterModule, AdapterNetwork
from lora_core.network.blocks import SD_BLOCKS, BlockLayout, BlockShape, block_dims_and_alphas
from lora_core.network.loha import LoHaModule
from lora_core.network.lokr import LoKrModule
from lora_core.network.lora import DyLoRAModule, LoRAModule
from lora_core.network.lycoris_family import LycorisFamilyNetwork, make_module, uses_lycoris
from lora_core.network.naming import (
    SD_NAMING,
    LoraNaming,
    Target,
    text_encoder_targets,
    unet_targets,
)
from lora_core.profile import ALL_NETWORK_TYPES, NetworkSection, conv_rank_and_alpha

log = logging.getLogger(__name__)

MODULE_CLASSES: dict[str, type[AdapterModule]] = {
    "LoRA": LoRAModule, "LoCon": LoRAModule, "LoHa": LoHaModule, "LoKr": LoKrModule,
    "DyLoRA": DyLoRAModule,
}


def _check(net: NetworkSection) -> None:
    if net.network_module not in ALL_NETWORK_TYPES:
        raise ProfileError(f"`[network] network_module` = {net.network_module!r} is not one of "
                           f"{', '.join(ALL_NETWORK_TYPES)}",
                           "load the profile through profile_load.profile_from_dict, which "
                           "normalises it")
    for f in dataclasses.fields(net):
        if f.name in ("network_dropout", "rank_dropout", "module_dropout"):
            value = getattr(net, f.name)  # bounded by its declaration (profile.py, checked)
            assert value is None or f.metadata["min"] <= value <= f.metadata["max"], \
                f"`[network] {f.name}` = {value}: the profile check refuses it"


def build_network(unet: nn.Module, text_encoders: list[nn.Module], net: NetworkSection,
                  lr_weights: list[float] | None = None,
                  text_encoder_prefixes: list[str] | None = None, *,
                  naming: LoraNaming = SD_NAMING, layout: BlockLayout = SD_BLOCKS,
                  shapes: dict[str, tuple[int, float]] | None = None) -> AdapterNetwork:
    """The network of type ``net.network_module`` over ``unet`` and ``text_encoders``.

    ``naming`` and ``layout`` are the model family's (``bundle.impl.naming`` and
    ``block_layout()``; SD 1.x's by default): SDXL names U-Net modules in the original
    layout, its text encoders ``lora_te1`` / ``lora_te2``, and has 23 block slots.
    ``lr_weights``: the per-block learning-rate weights (blocks.block_lr_weights with the
    family's layout), or None; blocks with weight 0 get no module.
    ``text_encoder_prefixes``: one key prefix per encoder, overriding the family's.
    ``shapes`` (``dim_from_weights``, ``base_weights``): (rank, alpha) by kohya
    name from a file; only those modules are built, with those shapes. The modules are built
    in float32 on the default device and not yet applied: call ``apply_to()``.
    """
    _check(net)
    kind = net.network_module
    conv_rank, conv_alpha = conv_rank_and_alpha(net)
    blocks = block_dims_and_alphas(net.block_dims, net.block_alphas, net.conv_block_dims,
                                   net.conv_block_alphas, net.network_dim, net.network_alpha,
                                   conv_rank, conv_alpha, lr_weights, layout)
    lycoris = uses_lycoris(net)
    network = LycorisFamilyNetwork(kind) if lycoris else AdapterNetwork(kind)

    def make(target: Target, rank: int, alpha: float) -> AdapterModule:
        if lycoris:
            return make_module(target, rank, alpha, net)
        options = {"dropout": net.network_dropout, "rank_dropout": net.rank_dropout,
                   "module_dropout": net.module_dropout}
        if kind == "LoKr":
            options["factor"] = net.factor
        if kind == "DyLoRA":
            options["unit"] = net.dylora_unit
        return MODULE_CLASSES[kind](target.lora_name, target.module, rank, alpha, **options)

    if not net.network_train_unet_only:
        prefixes = (text_encoder_prefixes
                    or naming.text_encoder_prefixes(len(text_encoders)))
        for encoder, prefix in zip(text_encoders, prefixes, strict=True):
            for target in text_encoder_targets(encoder, prefix):
                if shapes is not None:
                    if target.lora_name in shapes:
                        network.add(make(target, *shapes[target.lora_name]), text_encoder=True)
                    continue
                network.add(make(target, net.network_dim, net.network_alpha), text_encoder=True)

    if not net.network_train_text_encoder_only:
        with_conv = conv_rank is not None or (blocks is not None and blocks.conv_dims is not None)
        for target in unet_targets(unet, with_conv=with_conv or shapes is not None,
                                   naming=naming):
            if shapes is not None:
                if target.lora_name in shapes:
                    network.add(make(target, *shapes[target.lora_name]), text_encoder=False)
                continue
            shape = _rank_and_alpha(target, blocks, net, conv_rank, conv_alpha)
            if shape is None:
                network.skipped_names.append(target.lora_name)
                continue
            network.add(make(target, *shape), text_encoder=False)

    if network.skipped_names:
        log.info("%d U-Net modules get no %s module (block rank or learning-rate weight 0)",
                 len(network.skipped_names), kind)
    return network


def _rank_and_alpha(target: Target, blocks: BlockShape | None, net: NetworkSection,
                    conv_rank: int | None, conv_alpha: float | None
                    ) -> tuple[int, float] | None:
    if blocks is not None:
        return blocks.for_module(target.lora_name, target.is_conv3x3)
    if target.is_conv3x3:
        assert conv_rank is not None and conv_alpha is not None  # with_conv implies them
        return conv_rank, conv_alpha
    return net.network_dim, net.network_alpha
