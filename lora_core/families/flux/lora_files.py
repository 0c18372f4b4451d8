"""What a Flux.1 LoRA file says beyond its family (which ``saving.lora_header`` tells): the
variant it was trained on, which files it can be merged with, the parts of the model its
modules adapt, and the settings ``lora-train inspect`` shows. Pure Python; no torch.
"""

from __future__ import annotations

import re

from lora_core.families.flux import metadata as flux_metadata

VARIANT_WORDS = {"dev": "Flux.1 dev", "schnell": "Flux.1 schnell", "chroma": "Chroma"}
# Modules per part of a Flux.1 model, in the order they are shown; words for every part.
PARTS = ("double_blocks", "single_blocks", "dit_other", "clip_l", "t5")
PART_WORDS = {"double_blocks": "double blocks", "single_blocks": "single blocks",
              "dit_other": "other DiT layers", "clip_l": "CLIP-L", "t5": "T5"}
# Its own ss_* keys (shown after the common ones), the common ones that mean nothing for it
# (it has no CLIP skip, CLIP token length or min-SNR), and its labels for common ones.
INSPECT_SETTINGS = (
    ("ss_model_type", "model type"), ("ss_guidance_scale", "guidance scale"),
    ("ss_timestep_sampling", "timestep sampling"), ("ss_sigmoid_scale", "sigmoid scale"),
    ("ss_discrete_flow_shift", "discrete flow shift"),
    ("ss_model_prediction_type", "model prediction type"),
    ("ss_weighting_scheme", "weighting scheme"), ("ss_logit_mean", "logit mean"),
    ("ss_logit_std", "logit std"), ("ss_mode_scale", "mode scale"),
    ("ss_apply_t5_attn_mask", "apply T5 attention mask"),
    ("ss_t5xxl_max_token_length", "T5 max token length"))
INSPECT_HIDDEN = frozenset({"ss_clip_skip", "ss_max_token_length", "ss_min_snr_gamma"})
INSPECT_LABELS = {"ss_unet_lr": "DiT lr"}


def lora_variant(metadata: dict[str, str]) -> str | None:
    """"dev", "schnell" or "chroma" as a Flux LoRA's metadata says (``modelspec.architecture``
    as ``metadata.modelspec_keys`` writes it, sd-scripts' "chroma" base model version and
    model type), None when it does not ("flux1" alone is dev or schnell)."""
    architecture = metadata.get("modelspec.architecture", "").partition("/")[0]
    for variant, name in flux_metadata.ARCHITECTURES.items():
        if architecture == name:
            return variant
    if "chroma" in (metadata.get("ss_base_model_version"), metadata.get("ss_model_type")):
        return "chroma"
    return None


def lora_lineage(variant: str | None) -> str | None:
    """Chroma (trained far from schnell, without its modulation layers) apart from dev /
    schnell; None when the variant is unknown (it may be either)."""
    return None if variant is None else "chroma" if variant == "chroma" else "flux1"


def lora_part(name: str) -> str:
    """The part of a Flux.1 model a LoRA module adapts (:data:`PARTS`), from its name in
    sd-scripts' layout (``lora_unet_double_blocks_0_…``, ``lora_te1_…`` CLIP-L, ``lora_te3_…``
    T5) or diffusers' (``transformer.single_transformer_blocks.0.…``, ``text_encoder.``
    CLIP-L, ``text_encoder_2.`` T5)."""
    if name.startswith(("lora_te1_", "text_encoder.")):
        return "clip_l"
    if name.startswith(("lora_te3_", "text_encoder_2.")):
        return "t5"
    if re.search(r"single_(?:transformer_)?blocks[._]\d", name):
        return "single_blocks"
    if re.search(r"(?:double|transformer)_blocks[._]\d", name):
        return "double_blocks"
    return "dit_other"


def lora_parts(modules: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(PARTS, 0)
    for name in modules:
        counts[lora_part(name)] += 1
    return {part: n for part, n in counts.items() if n}


def merged_file_keys(variant: str | None) -> dict[str, str]:
    """The base model version and network module sd-scripts writes, for a merged file whose
    first input does not say."""
    return {"ss_base_model_version": flux_metadata.base_model_version(variant or "dev"),
            "ss_network_module": flux_metadata.NETWORK_MODULE}
