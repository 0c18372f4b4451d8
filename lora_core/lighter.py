"""One step lighter: the setting to change after a CUDA out-of-memory error.

The remedies are the ones every guide lists for OOM (kohya-compat.md §12 #5,
wizard-anchors.md #13), tried in the order that costs the least: gradient checkpointing
(slower steps, same result), then caching latents (the VAE leaves the GPU; not possible with
color_aug / random_crop), then half the batch with twice the accumulation (the same effective
batch, so the same training), then an 8-bit AdamW. Each suggestion is a list of ``--set``
overrides, which ``lora-train run`` takes as they are and the wizard offers on one key.

Torch-free: the CLI and the wizard call it after the child process has failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_core.profile import Profile

_EIGHT_BIT = {"AdamW": "AdamW8bit", "Lion": "Lion8bit", "SGDNesterov": "SGDNesterov8bit"}


@dataclass(frozen=True)
class Lighter:
    overrides: list[str]  # section.key=value, as --set takes them
    description: str


def lighter_setting(profile: Profile) -> Lighter | None:
    """The first remedy this profile does not use yet, or None when all are in use."""
    tr, ds, opt = profile.training, profile.dataset, profile.optimizer
    if not tr.gradient_checkpointing:
        return Lighter(["training.gradient_checkpointing=true"],
                       "gradient checkpointing on (slower steps, much less memory)")
    if not (ds.cache_latents or ds.cache_latents_to_disk or ds.color_aug or ds.random_crop):
        return Lighter(["dataset.cache_latents=true"],
                       "latents cached (the VAE leaves the GPU while training)")
    if tr.train_batch_size > 1:
        # The largest batch below this one that divides it: the same effective batch
        # (6 -> 3 x 2, 5 -> 1 x 5).
        batch = next(b for b in range(tr.train_batch_size // 2, 0, -1)
                     if tr.train_batch_size % b == 0)
        accumulation = tr.gradient_accumulation_steps * tr.train_batch_size // batch
        return Lighter([f"training.train_batch_size={batch}",
                        f"training.gradient_accumulation_steps={accumulation}"],
                       f"batch size {batch} with {accumulation} accumulation steps (the same "
                       "effective batch)")
    if opt.optimizer_type in _EIGHT_BIT:
        return Lighter([f"optimizer.optimizer_type={_EIGHT_BIT[opt.optimizer_type]}"],
                       f"the 8-bit {opt.optimizer_type} (bitsandbytes; a quarter of the "
                       "optimizer memory)")
    return None
