"""Key conversion between diffusers' ``FluxTransformer2DModel`` layout and BFL's.

diffusers splits what BFL fuses: a double block's ``img_attn.qkv`` is ``attn.to_q/to_k/to_v``,
``txt_attn.qkv`` is ``attn.add_q_proj/add_k_proj/add_v_proj``, a single block's ``linear1``
is ``attn.to_q/to_k/to_v`` + ``proj_mlp`` (stacked along the output rows, in that order).
The final layer's modulation is stored (scale, shift) in diffusers and (shift, scale) in BFL.
Every other tensor is renamed only.

Pure Python over tensors (torch only for cat/chunk); it reads no files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# BFL name -> diffusers parts (stacked along dim 0), for everything outside the blocks.
_GLOBAL: dict[str, tuple[str, ...]] = {
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
_DOUBLE: dict[str, tuple[str, ...]] = {
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
_DOUBLE_NORMS: dict[str, str] = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_SINGLE: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
_SINGLE_NORMS: dict[str, str] = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
SWAPPED_HALVES = ("final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias")

DIFFUSERS_DOUBLE_PREFIX = "transformer_blocks"
DIFFUSERS_SINGLE_PREFIX = "single_transformer_blocks"


def key_map(num_double: int, num_single: int) -> dict[str, tuple[str, ...]]:
    """Every BFL tensor name -> the diffusers tensor names it is made of, in stacking order."""
    out: dict[str, tuple[str, ...]] = {}

    def add(bfl: str, parts: tuple[str, ...], bfl_prefix: str = "", d_prefix: str = "") -> None:
        for suffix in ("weight", "bias"):
            out[f"{bfl_prefix}{bfl}.{suffix}"] = tuple(f"{d_prefix}{p}.{suffix}" for p in parts)

    for bfl, parts in _GLOBAL.items():
        add(bfl, parts)
    for n in range(num_double):
        for bfl, parts in _DOUBLE.items():
            add(bfl, parts, f"double_blocks.{n}.", f"{DIFFUSERS_DOUBLE_PREFIX}.{n}.")
        for bfl, part in _DOUBLE_NORMS.items():
            out[f"double_blocks.{n}.{bfl}"] = (f"{DIFFUSERS_DOUBLE_PREFIX}.{n}.{part}",)
    for n in range(num_single):
        for bfl, parts in _SINGLE.items():
            add(bfl, parts, f"single_blocks.{n}.", f"{DIFFUSERS_SINGLE_PREFIX}.{n}.")
        for bfl, part in _SINGLE_NORMS.items():
            out[f"single_blocks.{n}.{bfl}"] = (f"{DIFFUSERS_SINGLE_PREFIX}.{n}.{part}",)
    return out


def _count(keys: Iterable[str], prefix: str) -> int:
    from lora_core.families.flux.config import count_blocks

    return count_blocks(keys, prefix)


def bfl_plan(diffusers_keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The BFL tensors a diffusers-layout file gives (those whose parts are all present).

    Raises ValueError naming a diffusers key that maps to nothing (a file of another model
    family, or a layout this module does not know), as sd-scripts does.
    """
    keys = set(diffusers_keys)
    full = key_map(_count(keys, DIFFUSERS_DOUBLE_PREFIX), _count(keys, DIFFUSERS_SINGLE_PREFIX))
    used = {part for parts in full.values() for part in parts}
    unknown = sorted(keys - used)
    if unknown:
        raise ValueError(f"diffusers key '{unknown[0]}' has no Flux.1 (BFL) counterpart "
                         f"({len(unknown)} such keys)")
    return {bfl: parts for bfl, parts in full.items() if all(p in keys for p in parts)}


def _swap_halves(tensor):
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def convert_diffusers_to_bfl(get: Callable[[str], object], diffusers_keys: Iterable[str]
                             ) -> Iterable[tuple[str, object]]:
    """Yield ``(bfl_key, tensor)`` one at a time; ``get(key)`` reads one diffusers tensor
    (a dict's ``__getitem__`` or a safetensors handle's ``get_tensor``)."""
    import torch

    for bfl, parts in bfl_plan(diffusers_keys).items():
        tensors = [get(p) for p in parts]
        tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        if bfl in SWAPPED_HALVES:
            tensor = _swap_halves(tensor)
        yield bfl, tensor


def convert_bfl_to_diffusers(state: dict, hidden_size: int) -> dict:
    """BFL state dict -> diffusers layout (splitting fused tensors; ``hidden_size`` tells
    where a single block's ``linear1`` stops being q/k/v and starts being the MLP)."""
    keys = list(state)
    full = key_map(_count(keys, "double_blocks"), _count(keys, "single_blocks"))
    out = {}
    for bfl, tensor in state.items():
        parts = full.get(bfl)
        if parts is None:
            raise ValueError(f"BFL key '{bfl}' has no diffusers counterpart")
        if bfl in SWAPPED_HALVES:
            tensor = _swap_halves(tensor)
        if len(parts) == 1:
            out[parts[0]] = tensor
            continue
        sizes = [hidden_size] * 3 + ([tensor.shape[0] - 3 * hidden_size] if len(parts) == 4
                                     else [])
        for part, piece in zip(parts, tensor.split(sizes, dim=0), strict=True):
            out[part] = piece.clone()
    return out


def bfl_shapes(diffusers_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shapes the BFL tensors will have, from a diffusers file's header alone."""
    out = {}
    for bfl, parts in bfl_plan(diffusers_shapes).items():
        shapes = [tuple(diffusers_shapes[p]) for p in parts]
        out[bfl] = (sum(s[0] for s in shapes), *shapes[0][1:])
    return out
