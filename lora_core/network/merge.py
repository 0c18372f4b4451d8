"""Merging LoRA files into the base model before training (``[network] base_weights``).

sd-scripts' differential training (``--base_weights`` + ``--base_weights_multiplier``): each
file's update is added to the frozen weights it targets, ``W ← W + m·ΔW`` with
``ΔW = up @ down · alpha/rank`` (reshaped to the layer's weight for convolutions) and ``m``
the file's multiplier (1.0 when not given), before the new network is built; the new LoRA
then learns on top of the merged model. Only the base model held in memory changes, never a
file. LoRA and LoCon files only (``weights.module_shapes`` refuses the others).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lora_core.errors import ProfileError
from lora_core.network.build import build_network
from lora_core.network.naming import SD_NAMING, LoraNaming
from lora_core.network.weights import load_network_weights, module_shapes
from lora_core.profile import NetworkSection

log = logging.getLogger(__name__)


@torch.no_grad()
def merge_base_weights(unet: nn.Module, text_encoders: list[nn.Module], paths: list[str],
                       multipliers: list[float], naming: LoraNaming = SD_NAMING) -> list[str]:
    """Merge each file into ``unet`` / ``text_encoders`` in place; returns warnings.
    ``naming``: the model family's (how its modules are named in the files)."""
    warnings = []
    for index, path in enumerate(paths):
        multiplier = multipliers[index] if index < len(multipliers) else 1.0
        shapes = module_shapes(Path(path), "base_weights")
        network = build_network(unet, text_encoders, NetworkSection(network_module="LoCon"),
                                naming=naming, shapes=shapes)
        if not network.lora_modules():
            raise ProfileError(f"`[network] base_weights` {path} has no module of this model",
                               "it was trained for another model type")
        try:
            warnings += load_network_weights(network, Path(path))
        except ProfileError as exc:
            raise ProfileError(exc.message.replace("network_weights", "base_weights"),
                               exc.hint) from None
        for module in network.lora_modules():
            weight = module._org[0].weight
            delta = module.delta_weight().to(weight.device, torch.float32)
            weight.copy_((weight.float() + multiplier * delta.reshape(weight.shape))
                         .to(weight.dtype))
        unmatched = len(shapes) - len(network.lora_modules())
        if unmatched:
            warnings.append(f"{unmatched} modules of base_weights {Path(path).name} match no "
                            "layer of this model and were not merged")
        log.info("merged %s with multiplier %s", path, multiplier)
    return warnings
