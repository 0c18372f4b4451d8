"""Starting a network from an existing LoRA file (``network_weights``).

Loads the file's tensors into the matching modules. Like sd-scripts the load is non-strict
about modules (a file may hold fewer modules), but a shape mismatch is an error naming the
module and the rank to set, and a file with no matching module at all is an error too:
training would silently start from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lora_core.errors import ProfileError
from lora_core.network.lora import LoRANetwork
from lora_core.saving.lora_file import read_lora

log = logging.getLogger(__name__)


def load_network_weights(network: LoRANetwork, path: Path) -> list[str]:
    """Copy the file's weights into ``network``; returns warnings for the log."""
    tensors, _ = read_lora(path)
    own = network.state_dict()
    matched, warnings = 0, []
    for key, tensor in tensors.items():
        if key not in own:
            continue
        if own[key].shape != tensor.shape:
            module = key.rsplit(".", 2)[0]
            raise ProfileError(
                f"`[network] network_weights` {path}: module {module} has shape "
                f"{tuple(tensor.shape)} in the file but {tuple(own[key].shape)} here",
                "set network_dim (and conv_dim) to the rank the file was trained with")
        own[key] = tensor.to(own[key].dtype)
        matched += 1
    if matched == 0:
        raise ProfileError(f"`[network] network_weights` {path} has no module of this network",
                           "it was trained for another model type, or is not a LoRA file")
    unused = [k for k in tensors if k not in own]
    if unused:
        warnings.append(f"{len(unused)} tensors in {path.name} match no module here and are "
                        "ignored")
    network.load_state_dict(own)
    for module in network.lora_modules():  # alpha may come from the file
        module.scale = float(module.alpha) / module.rank
    for w in warnings:
        log.warning(w)
    return warnings
