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
  A note says how full_bf16's updates are rounded: stochastically with AdamW and AdamW8bit,
  to nearest (small updates lost) with the other optimizers.
* ``blocks_to_swap``: Flux only, with gradient checkpointing (without it autograd would keep
  every block's weights for the backward, so none could leave the GPU), not with
  ``cpu_offload_checkpointing`` (as sd-scripts), and at most what leaves two double and two
  single blocks resident (sd-scripts' limit; 35 for Flux.1's 19 + 38 blocks).
* ``cpu_offload_checkpointing``: the SD U-Nets and Flux, with gradient checkpointing (it
  moves the inputs checkpointing keeps); on a machine without a CUDA GPU it changes nothing,
  which ``machine`` notes (a note: the profile saves memory on a GPU machine).

No torch: the torch version is read from the installed package's metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_core.checks.problem import Problem, error, warning
from lora_core.errors import ProfileError
from lora_core.family_registry import all_families
from lora_core.profile import Profile, uses_lycoris
from lora_core.training.optimizer_args import (
    STOCHASTIC_ROUNDING_TYPES,
    effective_optimizer_args,
    rounds_stochastically,
)

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
    if tr.full_bf16 and tr.mixed_precision == "bf16" and not tr.full_fp16:
        found.append(_rounding_note(optimizer))
    if tr.full_bf16 and optimizer in STOCHASTIC_ROUNDING_TYPES:
        found += _kernel_problems(profile)
    return found


def _kernel_problems(profile: Profile) -> list[Problem]:
    """full_bf16 with torch's AdamW computes each update itself, in float32, to round it
    stochastically: torch's own kernels (fused, foreach...) cannot be asked for then."""
    try:
        args = effective_optimizer_args(profile.optimizer)
    except ProfileError:
        return []  # the optimizer_args themselves are refused elsewhere
    asked = sorted(k for k in ("fused", "foreach", "capturable", "differentiable")
                   if args.get(k))
    if not asked:
        return []
    return [error(f"`[optimizer] optimizer_args` ask for {', '.join(asked)}=True, which "
                  "full_bf16 with AdamW cannot use: it computes each update in float32 "
                  "itself to round it stochastically into the bf16 weights",
                  f"remove {', '.join(f'{k}=True' for k in asked)} from optimizer_args "
                  "(fused_optimizer is ignored with full_bf16 for the same reason)",
                  section="optimizer", key="optimizer_args")]


def _rounding_note(optimizer: str) -> Problem:
    """How full_bf16's updates reach the bf16 weights: stochastically rounded with AdamW
    and AdamW8bit (training.stochastic_rounding), to nearest otherwise, where a small step
    is lost."""
    if rounds_stochastically(optimizer, full_bf16=True):
        eight_bit = "8bit" in optimizer
        return warning(
            f"`[training] full_bf16` with {optimizer}: each update is computed in float32 and "
            "written to the bf16 LoRA weights"
            + (" (its moments are 8-bit)" if eight_bit else " and moments")
            + " with stochastic rounding (Gupta et al. 2015), so updates smaller than bf16's "
            "precision still add up as in float32"
            + ("" if eight_bit else " (fused_optimizer does not apply)"),
            section="training", key="full_bf16")
    return warning(
        f"`[training] full_bf16` with {optimizer}: lora-train rounds stochastically for AdamW "
        "and AdamW8bit only; here an update smaller than half a bf16 step (0.2-0.4 % of the "
        "weight) may be rounded away, so the LoRA can learn more slowly than in float32 "
        "(bench/RESULTS.md, full_bf16 rounding)",
        "use optimizer_type = \"AdamW\" or \"AdamW8bit\" with full_bf16, or remove full_bf16",
        section="training", key="full_bf16")


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
    version = installed_torch_version()
    if version is not None and version < (2, 1):
        found.append(error(f"`[training] {key}` needs torch 2.1 or later for float8; this "
                           f"is torch {'.'.join(map(str, version))}",
                           f"upgrade torch, or remove {key}", section="training", key=key))
    return found


def installed_torch_version() -> tuple[int, int] | None:
    """(major, minor) of the installed torch, from its package metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("torch").split("+")[0].split(".")
        return int(parts[0]), int(parts[1])
    except (PackageNotFoundError, ValueError, IndexError):
        return None
