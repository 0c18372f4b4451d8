"""Checks of the memory levers (``[training] fp8_base`` / ``fp8_base_unet``,
``full_bf16`` / ``full_fp16``, ``blocks_to_swap``, ``cpu_offload_checkpointing``): where each
can work, and what it needs, by field. Which levers a model has is its family's answer (``levers``).

* ``fp8_base`` / ``fp8_base_unet``: the SD U-Nets (and with ``fp8_base`` their text
  encoders) and the Flux transformer; float8 needs torch 2.1 or later; not with the
  LyCORIS modules (``lycoris.kohya``, ``dora_wd``), which read the base layer's weight, kept
  in float8 then (lora-train's own LoRA / LoCon / LoHa / LoKr / DyLoRA only add to the
  layer's output). sd-scripts also requires mixed precision for it; here fp8 weights compute
  in fp32 when mixed_precision = "no", so a CPU can use it.
* ``full_bf16`` / ``full_fp16``: the LoRA weights (so their gradients and the optimizer
  state) in that half dtype, which must be the compute dtype: ``mixed_precision`` = "bf16" /
  "fp16" (as sd-scripts); one or the other. fp16 needs a CUDA GPU (``machine``'s check).
* ``blocks_to_swap``: Flux only, with gradient checkpointing (without it autograd would keep
  every block's weights for the backward, so none could leave the GPU), not with
  ``cpu_offload_checkpointing`` (as sd-scripts), and at most what leaves two double and two
  single blocks resident (sd-scripts' limit; 35 for Flux.1's 19 + 38 blocks).
* ``cpu_offload_checkpointing``: Flux only, with gradient checkpointing.

No torch: the torch version is read from the installed package's metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_core.checks.problem import Problem, error
from lora_core.family_registry import all_families
from lora_core.profile import Profile, uses_lycoris

if TYPE_CHECKING:
    from lora_core.families.interface import ModelFamily


def lever_problems(profile: Profile, fam: ModelFamily | None) -> list[Problem]:
    """Every lever set where it cannot work, at its field. ``fam``: the base model's family
    (None when it is not known: nothing family-specific is said then), which says which
    levers it has (``levers``) and its own limits on them."""
    tr = profile.training
    found: list[Problem] = []
    for key in ("fp8_base", "fp8_base_unet"):
        if getattr(tr, key):
            found += _fp8_problems(profile, fam, key)
    found += _half_lora_problems(profile)
    swapping = {"blocks_to_swap": tr.blocks_to_swap, "cpu_offload_checkpointing":
                tr.cpu_offload_checkpointing or None}
    for key, value in swapping.items():
        if value is None:
            continue
        if fam is not None and key not in fam.levers:
            owners = " / ".join(f.words for f in all_families() if key in f.levers)
            found.append(error(
                f"`[training] {key}` is for {owners} models; the base model is "
                f"{fam.words}", "remove it (this model fits with gradient_checkpointing, "
                "cache_latents, fp8_base and an 8-bit optimizer)",
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
    if fam is not None:
        found += fam.lever_problems(profile)
    return found


def _half_lora_problems(profile: Profile) -> list[Problem]:
    """full_bf16 / full_fp16 with the mixed precision of their dtype, one at a time."""
    tr = profile.training
    if tr.full_bf16 and tr.full_fp16:
        return [error("`[training] full_fp16` and full_bf16 are both set: the LoRA weights are "
                      "kept in one half dtype", "keep the one that matches mixed_precision "
                      "(full_bf16 with \"bf16\", full_fp16 with \"fp16\") and remove the "
                      "other", section="training", key="full_fp16")]
    found = []
    for key, wanted in (("full_bf16", "bf16"), ("full_fp16", "fp16")):
        if getattr(tr, key) and tr.mixed_precision != wanted:
            found.append(error(
                f"`[training] {key}` keeps the LoRA weights in {wanted}, so it needs "
                f"mixed_precision = \"{wanted}\"; it is \"{tr.mixed_precision}\"",
                f"set [training] mixed_precision = \"{wanted}\", or remove {key}",
                section="training", key=key))
    optimizer = profile.optimizer.optimizer_type
    if tr.full_fp16 and optimizer.split(".")[-1] in _FP16_UNSAFE_OPTIMIZERS:
        # torch's Adam family keeps its moments in the parameters' dtype: in fp16 their
        # eps (1e-8) is 0 and a small second moment underflows to 0, so a step divides by 0
        # and the weights become inf (measured: three steps at lr 1e-4).
        found.append(error(
            f"`[training] full_fp16` with {optimizer}: its moments would be fp16, where its "
            "eps (1e-8) is 0, and the LoRA weights become infinite within a few steps",
            "use optimizer_type = \"AdamW8bit\" (its state is 8-bit with fp32 maths), or "
            "full_bf16 on a GPU with bf16", section="training", key="full_fp16"))
    return found


# torch's optimizers whose state follows the parameters' dtype and divide by sqrt(v) + eps.
_FP16_UNSAFE_OPTIMIZERS = {"AdamW", "Adam", "NAdam", "RAdam", "Adamax", "Adagrad", "RMSprop"}


def _fp8_problems(profile: Profile, fam: ModelFamily | None, key: str) -> list[Problem]:
    found = []
    if fam is not None and key not in fam.levers:
        found.append(error(
            f"`[training] {key}` for {fam.words} models is not wired yet",
            f"remove {key}; gradient_checkpointing and an 8-bit optimizer lower the memory "
            "a LoRA needs", section="training", key=key))
    net = profile.network
    if uses_lycoris(net):
        found.append(error(
            f"`[training] {key}` with LyCORIS' {net.network_module}"
            f"{' (dora_wd)' if net.dora_wd else ''} modules is not wired: they read the base "
            "layer's weight, which fp8 keeps in float8", f"use LoRA / LoCon / LoHa / LoKr "
            f"with {key}, or remove {key}", section="training", key=key))
    version = _torch_version()
    if version is not None and version < (2, 1):
        found.append(error(f"`[training] {key}` needs torch 2.1 or later for float8; this "
                           f"is torch {'.'.join(map(str, version))}",
                           f"upgrade torch, or remove {key}", section="training", key=key))
    return found


def _torch_version() -> tuple[int, int] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("torch").split("+")[0].split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return None
