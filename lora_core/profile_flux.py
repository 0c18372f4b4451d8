"""The ``[flux]`` profile section: Flux.1 (dev, schnell) and Chroma's own files and
flow-matching settings, under sd-scripts' ``flux_train_network.py`` names. A section of its own
so an SD profile never carries it (``profile.OPTIONAL_SECTIONS``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_core.errors import ProfileError
from lora_core.profile_fields import setting

FLUX_MODEL_TYPES = ("", "flux", "chroma")
TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
MODEL_PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")
TRAIN_BLOCKS = ("all", "single", "double")
# networks.lora_flux's network_args that are fields of [flux] (sd-scripts' names): what
# `network_args = ["train_blocks=single", ...]` sets, and what an export writes back there.
LORA_FLUX_ARGS = ("train_blocks", "train_t5xxl", "split_qkv", "img_attn_dim", "txt_attn_dim",
                  "img_mlp_dim", "txt_mlp_dim", "img_mod_dim", "txt_mod_dim", "single_dim",
                  "single_mod_dim", "in_dims", "train_double_block_indices",
                  "train_single_block_indices", "network_reg_dims")
# The per-type ranks, in sd-scripts' type_dims order.
TYPE_DIM_FIELDS = LORA_FLUX_ARGS[3:11]
_TYPE_DIM_DOC = "Rank of {what} (unset: network_dim; 0: none). networks.lora_flux's {name}."
_INDICES_DOC = ("Which {kind} blocks get LoRA modules: \"all\", \"none\" or indices and "
                "ranges like \"0,2-4\" (unset: all). networks.lora_flux's {name}.")


@dataclass
class FluxSection:
    """Flux.1 (dev, schnell) and Chroma: the three files beside the transformer and the
    flow-matching settings, under flux_train_network.py's names. Only for Flux models: the
    check refuses a value set here for an SD model."""

    ae: str = setting("", "The autoencoder file (ae.safetensors, 16 latent channels).",
                      path=True)
    clip_l: str = setting(
        "", "The CLIP-L text encoder file (clip_l.safetensors); not used by Chroma.", path=True)
    t5xxl: str = setting(
        "", "The T5-XXL text encoder file (t5xxl_fp16.safetensors or an fp8 e4m3fn one).",
        path=True)
    model_type: str = setting(
        "", "\"flux\" (dev or schnell, read from the file) or \"chroma\"; empty: read from "
        "the file.", choices=FLUX_MODEL_TYPES)
    apply_t5_attn_mask: bool = setting(
        False, "Mask T5's padding tokens in attention (Chroma requires it).")
    t5xxl_max_token_length: int | None = setting(
        None, "T5 tokens per caption (unset: 512 for dev and Chroma, 256 for schnell).",
        min=1, max=512)
    guidance_scale: float | None = setting(
        None, "The guidance value the model is given while training (unset: 3.5 for dev, 0.0 "
        "for Chroma, which sd-scripts requires; schnell takes none).", min=0.0)
    timestep_sampling: str = setting(
        "sigma", "How noise levels are drawn: sigma (the shifted schedule), uniform, sigmoid, "
        "shift (sigmoid shifted by discrete_flow_shift) or flux_shift (by image size).",
        choices=TIMESTEP_SAMPLINGS)
    sigmoid_scale: float = setting(1.0, "Scale of the sigmoid draw (sigmoid, shift).", min=0.0)
    discrete_flow_shift: float = setting(
        3.0, "Shift of the noise schedule (sigma and shift sampling).", min=0.001)
    model_prediction_type: str = setting(
        "sigma_scaled", "How the output is read: raw, additive (plus the noisy input) or "
        "sigma_scaled (the denoised estimate, loss weighted by weighting_scheme).",
        choices=MODEL_PREDICTION_TYPES)
    weighting_scheme: str = setting(
        "uniform", "Loss weighting / noise-level density (SD3's): uniform, logit_normal, "
        "mode, cosmap, sigma_sqrt or none.", choices=WEIGHTING_SCHEMES)
    logit_mean: float = setting(0.0, "Mean of the logit_normal density.")
    logit_std: float = setting(1.0, "Spread of the logit_normal density.", min=0.0)
    mode_scale: float = setting(1.29, "Scale of the mode density.")
    # networks.lora_flux's network_args that change which modules the LoRA file has.
    train_blocks: str = setting(
        "all", "Which transformer blocks get LoRA modules: all, single or double.",
        choices=TRAIN_BLOCKS)
    train_t5xxl: bool = setting(
        False, "Train a LoRA on T5-XXL too (lora_te3_…); needs the text encoders trained "
        "(not network_train_unet_only) and their outputs not cached.")
    split_qkv: bool = setting(
        False, "Train the fused q/k/v (and a single block's MLP) projections as separate "
        "LoRAs, saved merged.")
    img_attn_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' image attention", name="img_attn_dim"),
        min=0)
    txt_attn_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' text attention", name="txt_attn_dim"),
        min=0)
    img_mlp_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' image MLP", name="img_mlp_dim"), min=0)
    txt_mlp_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' text MLP", name="txt_mlp_dim"), min=0)
    img_mod_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' image modulation", name="img_mod_dim"),
        min=0)
    txt_mod_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="double blocks' text modulation", name="txt_mod_dim"),
        min=0)
    single_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="single blocks' linear1 / linear2", name="single_dim"),
        min=0)
    single_mod_dim: int | None = setting(
        None, _TYPE_DIM_DOC.format(what="single blocks' modulation", name="single_mod_dim"),
        min=0)
    in_dims: tuple[int, int, int, int, int] | None = setting(
        None, "Ranks of extra LoRA modules on the input layers [img, time, vector, guidance, "
        "txt], 0 for none (unset: none). networks.lora_flux's in_dims, like [4, 0, 0, 0, 4].",
        min=0)
    train_double_block_indices: str | None = setting(
        None, _INDICES_DOC.format(kind="double", name="train_double_block_indices"))
    train_single_block_indices: str | None = setting(
        None, _INDICES_DOC.format(kind="single", name="train_single_block_indices"))
    network_reg_dims: str | None = setting(
        None, "Ranks by module name: comma-separated regex=rank pairs matched (re.search, "
        "the first that matches wins) against the LoRA names, like \"txt_mlp=8,"
        "single_blocks_(3|4)_=0\"; a match overrides the other ranks and the block "
        "selection (0: none). networks.lora_flux's network_reg_dims.")


def lora_flux_network_args(fx: FluxSection) -> dict[str, str]:
    """The networks.lora_flux network_args ``fx`` sets (those not at their default), as
    sd-scripts reads and records them (``ss_network_args``): strings, booleans "True",
    in_dims as "[4,0,0,0,4]"."""
    args: dict[str, str] = {}
    for name in LORA_FLUX_ARGS:
        value = getattr(fx, name)
        if value is None or value is False or (name == "train_blocks" and value == "all"):
            continue
        if isinstance(value, tuple):
            value = "[" + ",".join(str(v) for v in value) + "]"
        args[name] = str(value)
    return args


def parse_reg_dims(text: str) -> tuple[tuple[str, int], ...]:
    """sd-scripts' ``network_reg_dims`` "regex=rank,regex=rank" -> ((regex, rank), ...) in
    the given order. sd-scripts skips a malformed pair with a warning; here it is a
    ProfileError naming it (as is a regex that does not compile)."""
    pairs = []
    for pair in text.split(","):
        if not pair.strip():
            continue
        regex, sep, rank = (part.strip() for part in pair.partition("="))
        if not sep or not regex or not re.fullmatch(r"\d+", rank):
            raise ProfileError(f"`[flux] network_reg_dims`: '{pair.strip()}' is not of the "
                               "form regex=rank", "write pairs like txt_mlp=8,img_mod=0")
        try:
            re.compile(regex)
        except re.error as exc:
            raise ProfileError(f"`[flux] network_reg_dims`: '{regex}' is not a regular "
                               f"expression ({exc})", "fix the pattern") from None
        pairs.append((regex, int(rank)))
    return tuple(pairs)


def parse_block_selection(selection: str, total: int | None, field: str) -> list[bool]:
    """"all", "none" / "", or comma-separated indices and a-b ranges -> a mask of ``total``
    blocks (sd-scripts' ``parse_block_selection``). ``total`` None: the syntax only (an empty
    list back). ProfileError naming ``field`` for a bad part or an index the model lacks."""
    selection = selection.strip()
    count = 0 if total is None else total
    if selection == "all":
        return [True] * count
    if selection in ("none", ""):
        return [False] * count
    chosen = [False] * count
    for part in selection.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ProfileError(f"`[flux] {field}`: '{part}' is not an index or a range",
                               "write \"all\", \"none\" or indices like 0,2,5-8")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else start
        if start > end:
            raise ProfileError(f"`[flux] {field}`: '{part.strip()}' is a backward range",
                               "write the lower index first, like 2-5")
        if total is None:
            continue
        if end >= total:
            raise ProfileError(f"`[flux] {field}`: '{part.strip()}' is outside 0-{total - 1}"
                               f" (the model has {total} such blocks)",
                               "use indices the model has")
        for i in range(start, end + 1):
            chosen[i] = True
    return chosen
