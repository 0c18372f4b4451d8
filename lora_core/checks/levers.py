"""Checks of the memory levers (``[training] fp8_base``, ``blocks_to_swap``,
``cpu_offload_checkpointing``): where each can work, and what it needs, by field.

* ``fp8_base``: the Flux transformer (and an fp8 T5 file); SD 1.x / 2.x / SDXL U-Nets are not
  wired yet; float8 needs torch 2.1 or later.
* ``blocks_to_swap``: Flux only, with gradient checkpointing (without it autograd would keep
  every block's weights for the backward, so none could leave the GPU), not with
  ``cpu_offload_checkpointing`` (as sd-scripts), and at most what leaves two double and two
  single blocks resident (sd-scripts' limit; 35 for Flux.1's 19 + 38 blocks).
* ``cpu_offload_checkpointing``: Flux only, with gradient checkpointing.

No torch: the torch version is read from the installed package's metadata.
"""

from __future__ import annotations

from lora_core.checks.problem import Problem, error
from lora_core.profile import Profile
from lora_core.saving.lora_header import FAMILY_WORDS as _WORDS


def lever_problems(profile: Profile, family: str | None) -> list[Problem]:
    """Every lever set where it cannot work, at its field. ``family``: the base model's
    (None when it is not known: nothing family-specific is said then)."""
    tr = profile.training
    found: list[Problem] = []
    if tr.fp8_base:
        found += _fp8_problems(family)
    flux_only = {"blocks_to_swap": tr.blocks_to_swap, "cpu_offload_checkpointing":
                 tr.cpu_offload_checkpointing or None}
    for key, value in flux_only.items():
        if value is None:
            continue
        if family is not None and family != "flux":
            found.append(error(
                f"`[training] {key}` is for Flux models; the base model is "
                f"{_WORDS.get(family, family)}", "remove it (SD U-Nets fit with "
                "gradient_checkpointing, cache_latents and an 8-bit optimizer)",
                section="training", key=key))
            continue
        if not tr.gradient_checkpointing:
            found.append(error(
                f"`[training] {key}` needs `gradient_checkpointing = true`: "
                + ("without it autograd keeps every block's weights for the backward, so no "
                   "block could leave the GPU" if key == "blocks_to_swap" else
                   "it moves the inputs that checkpointing keeps"),
                "set [training] gradient_checkpointing = true", section="training", key=key))
    if tr.blocks_to_swap and tr.cpu_offload_checkpointing:
        found.append(error("`[training] cpu_offload_checkpointing` cannot be used with "
                           "blocks_to_swap (as in sd-scripts)",
                           "choose one: blocks_to_swap saves more memory",
                           section="training", key="cpu_offload_checkpointing"))
    if tr.blocks_to_swap and family == "flux":
        found += _swap_limit(profile)
    return found


def _fp8_problems(family: str | None) -> list[Problem]:
    found = []
    if family is not None and family != "flux":
        found.append(error(
            f"`[training] fp8_base` for {_WORDS.get(family, family)} U-Nets is not wired yet "
            "(the Flux transformer has it)", "remove fp8_base; gradient_checkpointing and "
            "an 8-bit optimizer lower the memory an SD LoRA needs",
            section="training", key="fp8_base"))
    version = _torch_version()
    if version is not None and version < (2, 1):
        found.append(error(f"`[training] fp8_base` needs torch 2.1 or later for float8; this "
                           f"is torch {'.'.join(map(str, version))}",
                           "upgrade torch, or remove fp8_base",
                           section="training", key="fp8_base"))
    return found


def _swap_limit(profile: Profile) -> list[Problem]:
    from lora_core.errors import LoraError
    from lora_core.families.flux.config import max_blocks_to_swap
    from lora_core.families.flux.inputs import resolve_inputs

    try:
        inputs = resolve_inputs(profile)
    except LoraError:
        return []  # the inputs' own check says what is wrong
    if inputs.info is None:  # the built-in before its first run: its sizes are ours
        from lora_core.families.flux.builtin import TINY_CONFIG

        depth, single = TINY_CONFIG.depth, TINY_CONFIG.depth_single_blocks
    else:
        depth, single = inputs.info.config.depth, inputs.info.config.depth_single_blocks
    most = max_blocks_to_swap(depth, single)
    if profile.training.blocks_to_swap <= most:
        return []
    return [error(f"`[training] blocks_to_swap` = {profile.training.blocks_to_swap} is more "
                  f"than this model allows: it has {depth} double and {single} single blocks, "
                  f"and two of each stay on the GPU, so at most {most}",
                  f"use {most} or less" if most else "remove blocks_to_swap: this model is "
                  "too small to swap blocks", section="training", key="blocks_to_swap")]


def _torch_version() -> tuple[int, int] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("torch").split("+")[0].split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return None
