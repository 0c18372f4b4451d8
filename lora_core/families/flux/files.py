"""Recognising and loading the Flux DiT file users have (``pretrained_model_name_or_path``).

Accepted, as sd-scripts accepts them:

* Black Forest Labs' single files (``flux1-dev.safetensors``, ``flux1-schnell…``), also with
  ComfyUI's ``model.diffusion_model.`` prefix, in bf16/fp16/fp32 or fp8 (float8_e4m3fn);
* diffusers-layout single files (``transformer_blocks.N.…``), converted to BFL keys;
* Chroma (a Flux.1-schnell derivative with a ``distilled_guidance_layer`` that replaces the
  per-block modulation weights, ``time_in``, ``vector_in`` and ``guidance_in``), trained
  without CLIP-L and always with the T5 padding mask (``check_variant_settings``).

dev vs schnell is read from the weights: a guidance-distilled model has ``guidance_in``.
Recognition reads the safetensors header only (no torch, no weights); loading reads one
tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.families.flux import diffusers_layout
from lora_core.families.flux.config import FluxConfig, config_from_shapes
from lora_core.models.headers import read_entries

COMFY_PREFIX = "model.diffusion_model."
FP8_HEADER_DTYPES = ("F8_E4M3",)
OTHER_FP8_HEADER_DTYPES = ("F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ")
CHROMA_MARKER = "distilled_guidance_layer."


# A Flux.1 transformer's blocks (BFL and diffusers layouts, also under ComfyUI's
# ``model.diffusion_model.``): such a file is this family's, never read as an SD checkpoint.
# Its single-stream blocks tell it: SD3's transformer has ``transformer_blocks.`` too, but no
# single blocks.
_BLOCK_PREFIXES = ("double_blocks.", "single_blocks.", "single_transformer_blocks.")


def is_flux_transformer(shapes: Mapping[str, Any]) -> bool:
    return any(key.removeprefix(COMFY_PREFIX).startswith(_BLOCK_PREFIXES) for key in shapes)


def misplaced_part(shapes: Mapping[str, Any]) -> str | None:
    """What a file made for a Flux run is when it is not where it belongs: its transformer,
    its T5 or CLIP-L text encoder alone, or its 16-channel autoencoder (each a ``[flux]``
    file, never an SD base model or VAE); None for anything else."""
    if is_flux_transformer(shapes):
        return "a Flux.1 transformer (a Flux base model, not an SD part)"
    keys = list(shapes)
    if "shared.weight" in shapes and any(k.startswith("encoder.block.") for k in keys):
        return "a T5 text encoder alone (Flux's `[flux] t5xxl`)"
    if not any(k.startswith(("model.diffusion_model.", "encoder.", "decoder.",
                             "first_stage_model.")) for k in keys) \
            and any(k.startswith(("text_model.encoder.layers.", "encoder.layers."))
                    for k in keys):
        return "a CLIP text encoder alone (Flux's `[flux] clip_l`)"
    conv_out = shapes.get("encoder.conv_out.weight")
    if conv_out is not None and tuple(conv_out)[:1] == (32,):  # 2 x 16 latent channels
        return "a Flux autoencoder with 16 latent channels (Flux's `[flux] ae`)"
    return None


@dataclass(frozen=True)
class FluxFileInfo:
    """What a Flux DiT file is, from its header."""

    path: Path
    layout: str  # "bfl" or "diffusers"
    variant: str  # "dev", "schnell" or "chroma"
    key_prefix: str  # "" or "model.diffusion_model."
    config: FluxConfig
    weight_dtype: str  # safetensors dtype of the block weights: "BF16", "F16", "F8_E4M3" ...

    @property
    def is_fp8(self) -> bool:
        return self.weight_dtype in FP8_HEADER_DTYPES

    @property
    def model_type(self) -> str:
        """sd-scripts' ``model_type``: "chroma" for Chroma, else "flux"."""
        return "chroma" if self.variant == "chroma" else "flux"

    def describe(self) -> str:
        c = self.config
        return (f"Flux.1 {self.variant} ({self.layout} layout, {self.weight_dtype}): "
                f"{c.depth} double + {c.depth_single_blocks} single blocks, width "
                f"{c.hidden_size}, {c.num_heads} heads of {c.head_dim}")


def _strip_prefix(shapes: dict) -> tuple[dict, str]:
    if shapes and all(k.startswith(COMFY_PREFIX) for k in shapes):
        return {k[len(COMFY_PREFIX):]: v for k, v in shapes.items()}, COMFY_PREFIX
    return shapes, ""


def _not_flux(keys: list[str], where: str) -> ModelError:
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    if any(k.startswith(("model.diffusion_model.input_blocks", "input_blocks.", "down_blocks."))
           for k in keys):
        what = "a Stable Diffusion U-Net/checkpoint"
    elif any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        what = "an autoencoder (that file belongs in 'ae')"
    elif any(k.startswith(("encoder.block.", "shared.")) for k in keys):
        what = "a T5 text encoder (that file belongs in 't5xxl')"
    elif any("text_model." in k or k.startswith("encoder.layers.") for k in keys):
        what = "a CLIP text encoder (that file belongs in 'clip_l')"
    elif any(k.startswith("lora_") for k in keys):
        what = "a LoRA file, not a base model"
    else:
        what = f"not a Flux.1 transformer (first keys: {sample})"
    return ModelError(f"{where}: this is {what}",
                      "pass the Flux transformer file (flux1-dev.safetensors, "
                      "flux1-schnell.safetensors, an fp8 variant or a Chroma file)")


def inspect_flux_file(path: Path, *, where: str = "pretrained_model_name_or_path"
                      ) -> FluxFileInfo:
    """Recognise a Flux DiT file from its header; ModelError (naming ``where``) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{where}: {path} does not exist",
                         "give the path of the Flux transformer .safetensors file")
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ModelError(f"{where}: {path.name} is not a .safetensors file",
                         "Flux files are loaded from .safetensors only (no pickles)")
    _, entries, _ = read_entries(path)
    shapes, prefix = _strip_prefix({k: e[1] for k, e in entries.items()})
    dtypes = {(k[len(prefix):] if prefix else k): e[0] for k, e in entries.items()}
    keys = list(shapes)
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys):
        layout = "bfl"
    elif any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in keys):
        layout = "diffusers"
        try:
            shapes = diffusers_layout.bfl_shapes(shapes)
        except ValueError as exc:
            raise ModelError(f"{where}: {path.name}: {exc}",
                             "the file is a diffusers transformer of another model family; "
                             "pass a Flux.1 transformer") from None
    else:
        raise _not_flux(keys, f"{where}: {path.name}")
    if any(k.startswith(CHROMA_MARKER) for k in keys):
        variant = "chroma"
    elif "guidance_in.in_layer.weight" in shapes:
        variant = "dev"
    else:
        variant = "schnell"
    config = config_from_shapes(shapes, where=f"{where}: {path.name}")
    block_key = next((k for k in keys if k.endswith(("img_attn.qkv.weight", "linear1.weight",
                                                      "attn.to_q.weight"))), keys[0])
    weight_dtype = dtypes.get(block_key, "?")
    if weight_dtype in OTHER_FP8_HEADER_DTYPES:
        raise ModelError(f"{where}: {path.name} stores its weights as {weight_dtype}",
                         "only float8_e4m3fn fp8 files are supported (as in sd-scripts); use "
                         "the fp16/bf16 file or an e4m3fn one")
    return FluxFileInfo(path, layout, variant, prefix, config, weight_dtype)


def resolve_variant(info: FluxFileInfo, model_type: str | None) -> str:
    """Check sd-scripts' ``model_type`` ("flux" / "chroma") against the file."""
    if model_type in (None, ""):
        return info.variant
    if model_type not in ("flux", "chroma"):
        raise ModelError(f"model_type: '{model_type}' is not a Flux model type",
                         "use \"flux\" (dev or schnell, read from the file) or \"chroma\"")
    if (model_type == "chroma") != (info.variant == "chroma"):
        raise ModelError(f"model_type: '{model_type}' but {info.path.name} is Flux.1 "
                         f"{info.variant}", f"set model_type = \"{info.model_type}\" or "
                         "pass the matching file")
    return info.variant


def check_variant_settings(variant: str, apply_t5_attn_mask: bool) -> None:
    """Settings a variant cannot train without (sd-scripts asserts the same)."""
    if variant == "chroma" and not apply_t5_attn_mask:
        from lora_core.errors import ProfileError

        raise ProfileError("apply_t5_attn_mask: Chroma is trained with the T5 attention mask",
                           "set apply_t5_attn_mask = true for Chroma (sd-scripts requires it)")


def load_flux_model(path: Path, *, dtype, fp8_base: bool = False, info: FluxFileInfo | None
                    = None, where: str = "pretrained_model_name_or_path"):
    """Build the DiT from the file: architecture from the header, weights read one tensor at
    a time (fused/renamed for diffusers files) into an empty (meta) model.

    ``dtype``: the weights' dtype (torch.float32 on a CPU without mixed precision, bf16 ...).
    ``fp8_base``: keep Linear weights as float8_e4m3fn (cast once when the file is wider) and
    compute each layer in ``dtype`` (``fp8.Fp8Linear``); other tensors are kept in ``dtype``.
    Returns ``(model, info)``; the model is in eval mode with gradients off.
    """
    import torch
    from safetensors import safe_open

    from lora_core.families.flux.model import Flux
    from lora_core.models.fp8 import FP8_DTYPE, to_fp8

    info = info or inspect_flux_file(path, where=where)
    with torch.device("meta"):
        model = Flux(info.config)
    linear_weights = {f"{name}.weight" for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear)}
    expected = set(model.state_dict())
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        file_keys = [k[len(info.key_prefix):] for k in handle.keys()]

        def get(key: str):
            return handle.get_tensor(info.key_prefix + key)

        if info.layout == "diffusers":
            pairs = diffusers_layout.convert_diffusers_to_bfl(get, file_keys)
        else:
            pairs = ((k, get(k)) for k in file_keys if k in expected)
        for key, tensor in pairs:
            if fp8_base and key in linear_weights:
                state[key] = tensor if tensor.dtype == FP8_DTYPE else tensor.to(FP8_DTYPE)
            else:
                state[key] = tensor.to(dtype)
    missing = sorted(expected - set(state))
    if missing:
        raise ModelError(f"{where}: {Path(path).name} lacks {len(missing)} tensors of its own "
                         f"architecture, e.g. '{missing[0]}'",
                         "the file is incomplete (an interrupted download?); download it again")
    model.load_state_dict(state, assign=True, strict=True)
    if fp8_base:
        to_fp8(model, compute_dtype=dtype)  # each layer computed in the weights' dtype
    model.requires_grad_(False)
    return model.eval(), info
