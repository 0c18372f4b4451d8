"""Checks of a Flux.1 / Chroma profile, and of ``[flux]`` values on an SD one.

A Flux run trains from four files and two tokenizers: :func:`flux_input_problems` asks
``families.flux.inputs.resolve_inputs``, the resolution ``run`` loads from, so ``check``
stops on exactly what ``run`` would, at the field the error names. Options of the SD
trainer that mean nothing under flow matching, or that the Flux trainer does not wire yet,
are refused by field with why (:data:`MEANINGLESS_FOR_FLUX`, :data:`NOT_WIRED_FOR_FLUX`);
a ``[flux]`` value set for an SD model is refused too (:func:`flux_section_problems`).
networks.lora_flux's block indices are checked against the model's block counts, and
``train_t5xxl`` against untrained text encoders (:func:`lora_flux_problems`).

Pure Python: headers and small files only (``resolve_inputs`` reads no weights).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lora_core.checks.problem import Problem, error
from lora_core.errors import LoraError
from lora_core.profile import SECTIONS, Profile
from lora_core.profile_flux import parse_block_selection, parse_reg_dims
from lora_core.values import format_value

_FLOW = "not for flow matching: Flux.1 is trained on x_t = (1 − σ)·x0 + σ·ε against ε − x0"
# sd-scripts' options that mean nothing for a Flux model (its objective, text encoders and
# autoencoder are not SD's), and why. Each is refused where it is set (see _is_set).
MEANINGLESS_FOR_FLUX: dict[tuple[str, str], str] = {
    ("model", "v2"): "Flux.1 is not an SD 2.x model (its family is read from the weights)",
    ("model", "v_parameterization"): "Flux.1 has no ε / v choice: it is trained by flow "
                                     "matching (it predicts ε − x0)",
    ("model", "vae"): "a Flux model's autoencoder is `[flux] ae`",
    ("model", "clip_skip"): "Flux reads CLIP-L's pooled output and T5's last layer "
                            "(flux_train_network.py has no clip_skip)",
    ("dataset", "max_token_length"): "Flux's CLIP-L reads one 77-token window; T5's length "
                                     "is `[flux] t5xxl_max_token_length`",
    ("dataset", "weighted_captions"): "sd-scripts' Flux training has no weighted captions",
    ("training", "min_snr_gamma"): "min-SNR weighting is defined on DDPM's noise schedule; "
                                   "Flux weighs its loss by `[flux] weighting_scheme`",
    ("training", "scale_v_pred_loss_like_noise_pred"): "a v-prediction option; " + _FLOW,
    ("training", "v_pred_like_loss"): "a v-prediction option; " + _FLOW,
    ("training", "debiased_estimation_loss"): "it weighs by DDPM's SNR; " + _FLOW,
    ("training", "zero_terminal_snr"): "it rescales DDPM's noise schedule; " + _FLOW,
    ("training", "noise_offset"): _FLOW,
    ("training", "noise_offset_random_strength"): _FLOW,
    ("training", "adaptive_noise_scale"): _FLOW,
    ("training", "multires_noise_iterations"): _FLOW,
    ("training", "multires_noise_discount"): _FLOW,
    ("training", "ip_noise_gamma"): _FLOW,
    ("training", "ip_noise_gamma_random_strength"): _FLOW,
    ("training", "min_timestep"): "DDPM's timestep range; Flux draws its noise levels by "
                                  "`[flux] timestep_sampling`",
    ("training", "max_timestep"): "DDPM's timestep range; Flux draws its noise levels by "
                                  "`[flux] timestep_sampling`",
    ("network", "conv_dim"): "Flux's transformer blocks have no 3x3 convolutions",
    ("network", "conv_alpha"): "Flux's transformer blocks have no 3x3 convolutions",
    ("network", "block_dims"): "per-block values follow the SD U-Net's 25 / 23 blocks, not "
                               "Flux's double and single blocks",
    ("network", "block_alphas"): "per-block values follow the SD U-Net's blocks",
    ("network", "conv_block_dims"): "per-block values follow the SD U-Net's blocks",
    ("network", "conv_block_alphas"): "per-block values follow the SD U-Net's blocks",
    ("optimizer", "down_lr_weight"): "block learning-rate weights follow the SD U-Net's "
                                     "down / mid / up blocks",
    ("optimizer", "mid_lr_weight"): "block learning-rate weights follow the SD U-Net's "
                                    "blocks",
    ("optimizer", "up_lr_weight"): "block learning-rate weights follow the SD U-Net's blocks",
    ("optimizer", "block_lr_zero_threshold"): "block learning-rate weights follow the SD "
                                              "U-Net's blocks",
}
# Options that would mean something for Flux but that the Flux trainer does not carry out
# yet. One list, so that wiring a feature for Flux is dropping its entry here (and adding
# the test that it trains).
NOT_WIRED_FOR_FLUX: dict[tuple[str, str], str] = {
    ("network", "network_module"): "Flux trains sd-scripts' networks.lora_flux LoRA; "
                                   "LoCon / LyCORIS / DyLoRA for Flux is not wired yet "
                                   "(use \"LoRA\")",
    ("network", "dora_wd"): "DoRA for Flux is not wired yet",
    ("network", "base_weights"): "merging base_weights into a Flux model is not wired yet",
    ("network", "base_weights_multiplier"): "merging base_weights into a Flux model is not "
                                            "wired yet",
    ("model", "no_half_vae"): "the Flux autoencoder runs in the training dtype; a float32 "
                              "ae is not wired yet",
    ("training", "loss_type"): "Flux's loss is l2 (mean squared error) or l1; huber / "
                               "smooth_l1 for Flux are not wired yet",
}
# Values of a listed option that Flux does take (besides the field's default).
FLUX_ACCEPTS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("training", "loss_type"): ("l2", "l1"),
}
# Bool-or-unset fields the checks see resolved (``inputs.resolved_prediction`` turns unset
# into false): only true is a value someone set.
_TRUE_ONLY = {("model", "v2"), ("model", "v_parameterization"),
              ("training", "zero_terminal_snr")}
_FIELD_OF_MESSAGE = re.compile(r"^(?:`?\[(\w+)\] (\w+)`?|(\w+))[: ]")
_MODEL_FIELDS = {f.name for f in dataclasses.fields(SECTIONS["model"])}
_FLUX_FIELDS = {f.name for f in dataclasses.fields(SECTIONS["flux"])}


def _default(section: str, key: str) -> Any:
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _is_set(section: str, key: str, value: Any) -> bool:
    """Whether ``value`` is one someone gave (not the default, nor an "off" value of an
    unset-by-default field: ``noise_offset = 0`` is off)."""
    if (section, key) in _TRUE_ONLY:
        return value is True
    if value in FLUX_ACCEPTS.get((section, key), ()):
        return False
    default = _default(section, key)
    if default is None:
        return value not in (None, 0, False, "", [])
    return value != default


def flux_option_problems(profile: Profile) -> list[Problem]:
    """Every SD option set in a Flux profile: meaningless ones and ones not wired yet, each
    at its field with why."""
    found = []
    for table, tail in ((MEANINGLESS_FOR_FLUX, "remove it for a Flux model"),
                        (NOT_WIRED_FOR_FLUX, "remove it for a Flux model (or train an SD "
                                             "model with it)")):
        for (section, key), why in table.items():
            value = getattr(getattr(profile, section), key)
            if _is_set(section, key, value):
                found.append(error(f"`[{section}] {key}` = {format_value(value)} is not used "
                                   f"for Flux.1: {why}", tail, section=section, key=key))
    found += _resolution_problems(profile)
    return found


def _resolution_problems(profile: Profile) -> list[Problem]:
    """Flux packs its latents (1/8 of the pixels) in 2x2 patches: a fixed size (no buckets;
    bucket sizes are multiples of bucket_reso_steps, at least 32) must be a multiple of 16."""
    ds = profile.dataset
    width, height = ds.resolution
    if ds.enable_bucket or ds.dataset_config or not (width % 16 or height % 16):
        return []
    return [error(f"`[dataset] resolution` = {format_value(ds.resolution)}: both sides must be "
                  "multiples of 16 for Flux.1 (its 1/8-size latents are packed in 2x2 "
                  "patches)", "use a multiple of 16, such as 512 or 1024",
                  section="dataset", key="resolution")]


def flux_input_problems(profile: Profile) -> list[Problem]:
    """The four files and the tokenizers, resolved as the run resolves them
    (``families.flux.inputs.resolve_inputs``); its error at the field it names."""
    from lora_core.families.flux.inputs import resolve_inputs

    try:
        inputs = resolve_inputs(profile)
    except LoraError as exc:
        section, key = field_of_error(exc)
        return [error(exc.message, exc.hint, section=section, key=key),
                *lora_flux_problems(profile, None)]
    config = inputs.info.config if inputs.info is not None else None
    return lora_flux_problems(profile, config and (config.depth, config.depth_single_blocks))


def lora_flux_problems(profile: Profile, block_counts: tuple[int, int] | None
                       ) -> list[Problem]:
    """``[flux]``'s networks.lora_flux fields that the run would refuse: block indices the
    model (``block_counts``: double, single; None: syntax only) lacks, network_reg_dims
    that do not parse, and T5 trained without the text encoders."""
    fx, found = profile.flux, []
    for key, total in (("train_double_block_indices", block_counts and block_counts[0]),
                       ("train_single_block_indices", block_counts and block_counts[1])):
        value = getattr(fx, key)
        if value is None:
            continue
        try:
            parse_block_selection(value, total, key)
        except LoraError as exc:
            found.append(error(exc.message, exc.hint, section="flux", key=key))
    if fx.network_reg_dims:
        try:
            parse_reg_dims(fx.network_reg_dims)
        except LoraError as exc:
            found.append(error(exc.message, exc.hint, section="flux", key="network_reg_dims"))
    if fx.train_t5xxl and profile.network.network_train_unet_only:
        found.append(error(
            "`[flux] train_t5xxl` = true, but `[network] network_train_unet_only` = true: "
            "T5's LoRA trains with the text encoders, and they are not trained",
            "remove network_train_unet_only (CLIP-L is trained then too), or train_t5xxl",
            section="flux", key="train_t5xxl"))
    return found


def field_of_error(exc: LoraError) -> tuple[str, str]:
    """The profile field a Flux input error names: its message starts with ``[flux] key``
    or ``key:`` (``inputs``, ``files``, ``tokenizers`` write them so); a tokenizer that is
    not found is ``[model] tokenizer_cache_dir``; anything else is about the base model."""
    match = _FIELD_OF_MESSAGE.match(exc.message)
    if match:
        section, key, bare = match.groups()
        if section in SECTIONS and key:
            return section, key
        if bare in _FLUX_FIELDS:
            return "flux", bare
        if bare in _MODEL_FIELDS:
            return "model", bare
    if "tokenizer" in exc.message:
        return "model", "tokenizer_cache_dir"
    return "model", "pretrained_model_name_or_path"


def swap_limit_problems(profile: Profile) -> list[Problem]:
    """``blocks_to_swap`` against the Flux model's blocks (two of each kind stay)."""
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
