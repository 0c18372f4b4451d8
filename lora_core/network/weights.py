"""Starting a network from an existing LoRA / LoCon / LoHa / LoKr file (``network_weights``).

Loads the file's tensors into the matching modules unchanged (same values, cast only when
the file's dtype differs from the network's). Like sd-scripts the load is non-strict about
modules (a file may hold fewer or more modules than the network), but everything else that
would silently train something other than the file is an error naming the module:

* a module whose tensors are of another kind (``hada_*`` in the file, ``lora_*`` here):
  the network type differs;
* a shape mismatch: the rank (or LoKr's factor) differs — the message names the field;
* no module of the network in the file at all.

A module without ``alpha`` in the file (old sd-scripts files) gets alpha = rank, i.e.
scale 1, as sd-scripts and ComfyUI read such files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lora_core.errors import ProfileError
from lora_core.network.adapter import AdapterModule, AdapterNetwork
from lora_core.saving.lora_file import read_lora

log = logging.getLogger(__name__)

# The tensors that tell a file's module type apart (LyCORIS' names, kohya-compat.md §6.7).
_KIND_OF_FIELD = {"dora_scale": "DoRA", "lora_down.weight": "LoRA/LoCon",
                  "lora_up.weight": "LoRA/LoCon", "lora_mid.weight": "LoCon (Tucker)",
                  "hada_w1_a": "LoHa", "hada_t1": "LoHa", "lokr_w1": "LoKr",
                  "lokr_w1_a": "LoKr", "lokr_w2": "LoKr", "lokr_w2_a": "LoKr",
                  "lokr_t2": "LoKr", "diff": "Full", "on_input": "IA3",
                  "oft_blocks": "DiagOFT/BOFT", "a1.weight": "GLoRA"}


def _fields_by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"<lora_name>": {"<field>": tensor}}``: kohya names contain no dot."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, field = key.partition(".")
        grouped.setdefault(name, {})[field] = tensor
    return grouped


def _kind(fields) -> str:
    return next((_KIND_OF_FIELD[f] for f in fields if f in _KIND_OF_FIELD), "unknown")


def _rank_hint(module: AdapterModule) -> str:
    dim = "conv_dim" if module.is_conv3x3 else "network_dim"
    if module.kind == "LoKr":
        return (f"set {dim} and factor to the values the file was trained with (the rank "
                "decides whether lokr_w2 is one full matrix or lokr_w2_a/lokr_w2_b)")
    return f"set {dim} to the rank the file was trained with"


def _check_module(path: Path, module: AdapterModule, own_fields: dict[str, torch.Tensor],
                  file_fields: dict[str, torch.Tensor]) -> None:
    name = module.lora_name
    theirs, ours = set(file_fields) - {"alpha"}, set(own_fields) - {"alpha"}
    if theirs != ours:
        file_kind, here = _kind(theirs), _kind(ours)
        if file_kind != here:
            hint = (f"set `[network] network_module` to the file's type ({file_kind}), or "
                    "start from another file")
        elif module.kind == "LoKr":
            hint = _rank_hint(module)
        else:
            hint = "this variant (Tucker/CP, DoRA...) cannot be trained here; use another file"
        raise ProfileError(
            f"`[network] network_weights` {path}: module {name} has "
            f"{', '.join(sorted(theirs))} in the file ({file_kind}) but "
            f"{', '.join(sorted(ours))} here ({module.kind})", hint)
    for field, tensor in file_fields.items():
        mine = own_fields[field]
        if field != "alpha" and mine.shape != tensor.shape:
            raise ProfileError(
                f"`[network] network_weights` {path}: module {name} has {field} of shape "
                f"{tuple(tensor.shape)} in the file but {tuple(mine.shape)} here",
                _rank_hint(module))


def module_shapes(path: Path, what: str = "network_weights") -> dict[str, tuple[int, float]]:
    """Each module's (rank, alpha) in a LoRA / LoCon file, for ``dim_from_weights`` and
    ``base_weights`` (sd-scripts' ``create_network_from_weights``): rank from ``lora_down``,
    alpha from ``alpha`` (missing: the rank). Other module types are a ProfileError."""
    tensors, _ = read_lora(path)
    shapes: dict[str, tuple[int, float]] = {}
    for name, fields in _fields_by_module(tensors).items():
        down = fields.get("lora_down.weight")
        if down is None or "lora_mid.weight" in fields or "dora_scale" in fields:
            raise ProfileError(
                f"`[network] {what}` {path}: module {name} is {_kind(fields)}, and only plain "
                "LoRA / LoCon files can be read this way",
                "use a LoRA or LoCon file" if what == "base_weights" else
                "set network_dim (and conv_dim, factor) to the file's values and "
                "dim_from_weights = false")
        rank = int(down.shape[0])
        alpha = float(fields["alpha"]) if "alpha" in fields else float(rank)
        shapes[name] = (rank, alpha)
    if not shapes:
        raise ProfileError(f"`[network] {what}` {path} holds no LoRA module",
                           "name a LoRA .safetensors file")
    return shapes


def load_network_weights(network: AdapterNetwork, path: Path) -> list[str]:
    """Copy the file's weights into ``network``; returns warnings for the log."""
    tensors, _ = read_lora(path)
    by_module = _fields_by_module(tensors)
    own = network.state_dict()
    own_by_module = _fields_by_module(own)
    matched, warnings = 0, []
    for module in network.lora_modules():
        fields = by_module.get(module.lora_name)
        if fields is None:
            continue
        _check_module(path, module, own_by_module[module.lora_name], fields)
        for field, tensor in fields.items():
            key = f"{module.lora_name}.{field}"
            # reshape: some writers store alpha as [1] instead of a 0-d tensor
            own[key] = tensor.to(own[key].dtype).reshape(own[key].shape)
        alpha_key = f"{module.lora_name}.alpha"
        if "alpha" not in fields and alpha_key in own:  # (Full and IA3 have no alpha)
            own[alpha_key] = torch.tensor(float(module.rank), dtype=own[alpha_key].dtype)
        matched += 1
    if matched == 0:
        raise ProfileError(f"`[network] network_weights` {path} has no module of this network",
                           "it was trained for another model type, or is not a LoRA file")
    names = {m.lora_name for m in network.lora_modules()}
    unused = [n for n in by_module if n not in names]
    if unused:
        warnings.append(f"{len(unused)} modules in {Path(path).name} match no module here and "
                        "are ignored")
    missing = len(names) - matched
    if missing:
        warnings.append(f"{missing} modules of this network are not in {Path(path).name} and "
                        "start fresh")
    network.load_state_dict(own)  # also refreshes each module's scale from its alpha
    for w in warnings:
        log.warning(w)
    return warnings
