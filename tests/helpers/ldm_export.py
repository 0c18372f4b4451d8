"""Write a diffusers model as an A1111 / ComfyUI single-file checkpoint (test-only).

Users train on the ``.safetensors`` / ``.ckpt`` file in their A1111 models folder, so the
tests need such files for the tiny models. This is the project's own writer: it renames
every tensor from the diffusers / transformers layout to the original LDM / SAI layout, the
inverse of what a single-file loader does (diffusers' ``single_file_utils``, sd-scripts'
``model_util``), and the tests prove it by reading the files back with diffusers'
``from_single_file`` (kohya-compat.md §11).

Key layout written, per family:

=====================  ===========================================================
U-Net (all)            ``model.diffusion_model.`` + LDM / SAI names
                       (``input_blocks.1.1.proj_in``, ``middle_block.0.in_layers.0``,
                       ``output_blocks.2.1.conv``; via ``lora_core.families.sd.unet_layout``).
                       Tensors unchanged: SD1 ``proj_in`` is a 1x1 conv (4-D), SD2 and
                       SDXL ``proj_in`` are Linear (2-D), as in the released files.
VAE (all)              ``first_stage_model.`` + LDM names (``encoder.down.0.block.0.norm1``,
                       ``nin_shortcut``, ``encoder.mid.block_1``, ``decoder.up.N`` counted
                       from the bottom, ``mid.attn_1.{norm,q,k,v,proj_out}`` with the
                       attention weights as 1x1 convs ``[C, C, 1, 1]``).
SD1 text encoder       ``cond_stage_model.transformer.text_model.`` + transformers' CLIP
                       names (HF layout, as in SD 1.x checkpoints), plus
                       ``embeddings.position_ids``.
SD2 text encoder       ``cond_stage_model.model.`` + OpenCLIP names (below).
SDXL text encoder 1    ``conditioner.embedders.0.transformer.text_model.`` (HF layout),
                       plus ``embeddings.position_ids``.
SDXL text encoder 2    ``conditioner.embedders.1.model.`` + OpenCLIP names.
=====================  ===========================================================

OpenCLIP names: ``token_embedding.weight``, ``positional_embedding`` (no ``.weight``),
``transformer.resblocks.N.{ln_1, ln_2, attn.in_proj_weight, attn.in_proj_bias,
attn.out_proj, mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection`` and
``logit_scale``. ``in_proj`` is q, k and v stacked along dim 0 (``[3·width, width]``);
``text_projection`` is ``[width, projection_dim]``, applied as ``x @ text_projection``, so
it is the transpose of transformers' ``text_projection.weight``; ``logit_scale`` is
``ln(1/0.07)`` as in OpenCLIP's init (nothing text-side reads it).

**The SD2 extra layer.** SD 2.x conditions on the *penultimate* layer of OpenCLIP ViT-H
(24 layers), so diffusers and sd-scripts import only 23 layers and drop
``resblocks.23`` (kohya-compat.md §11). A diffusers SD2 text encoder with ``N`` layers is
therefore written with ``N + 1`` resblocks: the ``N`` real ones and a dummy last one
(seeded random weights, distinct from every real layer, so a loader that keeps the wrong
``N`` of them fails a bit-exact check) — the file looks like a real SD2 checkpoint, and a
loader's rule is "text encoder depth = resblock count − 1". ``text_projection`` (unused by
SD2, and not part of transformers' ``CLIPTextModel``) is written as a dummy
``[width, width]`` matrix, as ViT-H's is ``[1024, 1024]``; diffusers reads its first
dimension as the width when it splits ``in_proj``. (diffusers' ``from_single_file`` drops
``resblocks.23`` by name and skips keys its model lacks, so tiny SD2 files read back too.)

SD 1.x / 2.x files also get the LDM noise-schedule buffers (``betas``, ``alphas_cumprod``,
``sqrt_alphas_cumprod`` ...) that released SD 1.x / 2.x checkpoints carry, so loaders are
tested against those non-model keys too. ``.ckpt`` files are ``torch.save({"state_dict":
sd})``, loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lora_core.families.sd.unet_layout import state_dict_to_original

FAMILIES = ("sd1", "sd2", "sdxl")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer.text_model."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
CLIP_MAX_POSITIONS = 77
# Seed of the SD2 dummy last layer and text_projection; any fixed value works.
DUMMY_SEED = 24


# ---------------------------------------------------------------------------------------
# Collecting the parts
# ---------------------------------------------------------------------------------------

def _read_safetensors(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in names:
        if (folder / name).is_file():
            return load_file(str(folder / name))
    raise FileNotFoundError(f"{folder} has none of {', '.join(names)}")


def _parts_from_folder(folder: Path, family: str) -> dict[str, Any]:
    """State dicts (and the U-Net config) straight from a diffusers folder's files."""
    unet_file = ("diffusion_pytorch_model.safetensors",)
    parts: dict[str, Any] = {
        "unet": _read_safetensors(folder / "unet", unet_file),
        "unet_config": json.loads((folder / "unet" / "config.json").read_text("utf-8")),
        "vae": _read_safetensors(folder / "vae", unet_file),
        "text_encoder": _read_safetensors(folder / "text_encoder", ("model.safetensors",)),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = _read_safetensors(folder / "text_encoder_2",
                                                    ("model.safetensors",))
    return parts


def _parts_from_components(components: Any, family: str) -> dict[str, Any]:
    """State dicts from live models: a pipeline, or a mapping / object with ``unet``,
    ``vae``, ``text_encoder`` (and ``text_encoder_2``) modules."""
    def get(name: str) -> Any:
        part = components.get(name) if isinstance(components, Mapping) else getattr(
            components, name, None)
        if part is None:
            raise ValueError(f"{family} export needs the component {name!r}")
        return part

    unet = get("unet")
    parts: dict[str, Any] = {"unet": unet.state_dict(), "unet_config": dict(unet.config),
                             "vae": get("vae").state_dict(),
                             "text_encoder": get("text_encoder").state_dict()}
    if family == "sdxl":
        parts["text_encoder_2"] = get("text_encoder_2").state_dict()
    return parts


# ---------------------------------------------------------------------------------------
# Renaming, per part
# ---------------------------------------------------------------------------------------

def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict:
    """diffusers U-Net → ``model.diffusion_model.*`` (tensors untouched)."""
    return {UNET_PREFIX + k: v for k, v in state_dict_to_original(state_dict, config).items()}


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    """One diffusers ``AutoencoderKL`` key → its LDM name (without ``first_stage_model.``).

    The LDM decoder numbers its up levels from the bottom (``up.0`` is the full-resolution
    level), diffusers from the top, so ``decoder.up_blocks.i`` is ``decoder.up.(n−1−i)``.
    """
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        if m[2] == "downsamplers":
            return f"encoder.down.{m[1]}.downsample.{m[4]}"
        return f"encoder.down.{m[1]}.block.{m[3]}.{_rename_head(m[4], _VAE_RESNET)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        level = num_up_blocks - 1 - int(m[1])
        if m[2] == "upsamplers":
            return f"decoder.up.{level}.upsample.{m[4]}"
        return f"decoder.up.{level}.block.{m[3]}.{_rename_head(m[4], _VAE_RESNET)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_head(m[3], _VAE_RESNET)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_rename_head(m[2], _VAE_ATTENTION)}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", key) or re.fullmatch(
            r"(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise KeyError(f"VAE key {key!r} has no LDM name")


def _rename_head(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """diffusers VAE → ``first_stage_model.*``; mid-attention Linear weights become the
    original 1x1 conv weights ``[C, C, 1, 1]`` (diffusers squeezes them back on load)."""
    up_levels = {int(m[1]) for k in state_dict
                 if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    out = {}
    for key, tensor in state_dict.items():
        name = vae_key_to_ldm(key, len(up_levels))
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]
        out[VAE_PREFIX + name] = tensor
    return out


def _hf_text_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``text_model.`` wrapper, whichever transformers wrote them."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def clip_to_hf_layout(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """A CLIP-L text encoder in the HF layout SD1 and SDXL files use (``prefix`` ends with
    ``text_model.``), with the ``position_ids`` buffer those files carry."""
    out = {prefix + k: v for k, v in _hf_text_keys(state_dict).items()
           if k != "text_projection.weight"}
    out[prefix + "embeddings.position_ids"] = torch.arange(CLIP_MAX_POSITIONS)[None]
    return out


_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                   "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def clip_to_openclip(state_dict: Mapping[str, torch.Tensor], prefix: str, *,
                     extra_last_layer: bool) -> dict:
    """A transformers CLIP text encoder → OpenCLIP names under ``prefix``.

    ``extra_last_layer``: append the dummy resblock that SD2 files carry (module doc). When
    the model has no ``text_projection`` (SD2's ``CLIPTextModel``) a dummy
    ``[width, width]`` one is written.
    """
    sd = _hf_text_keys(state_dict)
    width = sd["embeddings.token_embedding.weight"].shape[1]
    out = {"token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": sd.pop("final_layer_norm.weight"),
           "ln_final.bias": sd.pop("final_layer_norm.bias")}
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"], dim=0)
        for hf, oc in _OPENCLIP_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{oc}.{kind}"] = sd.pop(f"{src}{hf}.{kind}")
    generator = torch.Generator().manual_seed(DUMMY_SEED)
    if "text_projection.weight" in sd:
        out["text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    elif out["token_embedding.weight"].is_meta:
        out["text_projection"] = torch.empty(width, width, device="meta")
    else:
        out["text_projection"] = torch.randn(width, width, generator=generator) * width**-0.5
    if extra_last_layer:
        template = {k.removeprefix(f"transformer.resblocks.{layers[-1]}."): v
                    for k, v in out.items()
                    if k.startswith(f"transformer.resblocks.{layers[-1]}.")}
        for name, like in template.items():
            if like.is_meta:  # a full-size architecture built without weights
                value = torch.empty_like(like)
            elif name.startswith(("ln_1", "ln_2")):
                value = torch.ones_like(like) if name.endswith("weight") else (
                    torch.zeros_like(like))
            else:
                value = torch.randn(like.shape, generator=generator, dtype=like.dtype) * 0.02
            out[f"transformer.resblocks.{layers[-1] + 1}.{name}"] = value
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    if sd:
        raise KeyError(f"text encoder keys with no OpenCLIP name: {sorted(sd)[:5]}")
    return {prefix + k: v for k, v in out.items()}


def ldm_schedule_buffers(num_timesteps: int = 1000, beta_start: float = 0.00085,
                         beta_end: float = 0.012) -> dict[str, torch.Tensor]:
    """The noise-schedule buffers LDM's ``DDPM.register_schedule`` saves in SD 1.x / 2.x
    checkpoints (``scaled_linear``: β linear in √β; v_posterior 0)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps,
                           dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    values = {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.float() for k, v in values.items()}


# ---------------------------------------------------------------------------------------
# The whole checkpoint
# ---------------------------------------------------------------------------------------

def checkpoint_state_dict(source: Any, family: str, *,
                          dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The A1111-layout state dict of ``source`` (a diffusers folder, ``"builtin:<name>"``,
    a pipeline, or a mapping of components), floating tensors cast to ``dtype`` if given."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if isinstance(source, str) and source.startswith("builtin:"):
        from lora_core.models.builtin import ensure_builtin

        source = ensure_builtin(source.removeprefix("builtin:"))
    if isinstance(source, (str, Path)):
        parts = _parts_from_folder(Path(source), family)
    else:
        parts = _parts_from_components(source, family)
    sd = unet_to_ldm(parts["unet"], parts["unet_config"])
    sd.update(vae_to_ldm(parts["vae"]))
    if family == "sd1":
        sd.update(clip_to_hf_layout(parts["text_encoder"], SD1_TEXT_PREFIX))
    elif family == "sd2":
        sd.update(clip_to_openclip(parts["text_encoder"], SD2_TEXT_PREFIX,
                                   extra_last_layer=True))
    else:
        sd.update(clip_to_hf_layout(parts["text_encoder"], SDXL_TEXT1_PREFIX))
        sd.update(clip_to_openclip(parts["text_encoder_2"], SDXL_TEXT2_PREFIX,
                                   extra_last_layer=False))
    if family in ("sd1", "sd2"):
        sd.update(ldm_schedule_buffers())
    out, storages = {}, set()
    for key, tensor in sd.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        # safetensors refuses two entries on one storage (tied weights); copy only those, so
        # a full-size model is not held twice.
        if not tensor.is_meta:
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:
                tensor = tensor.clone()
            storages.add(storage)
        out[key] = tensor
    return out


def write_single_file(source: Any, path: str | Path, family: str, *, fmt: str | None = None,
                      dtype: torch.dtype | None = None) -> Path:
    """Write ``source`` (a diffusers folder, ``"builtin:<name>"``, a pipeline, or a mapping
    with ``unet``, ``vae``, ``text_encoder`` [, ``text_encoder_2``] modules) as an
    A1111-layout checkpoint at ``path``.

    ``family``: ``"sd1"``, ``"sd2"`` or ``"sdxl"``. ``fmt``: ``"safetensors"`` or
    ``"ckpt"`` (default: from the file suffix, ``.ckpt`` / ``.pt`` → ckpt). ``dtype``: cast
    floating tensors (e.g. ``torch.float16``, as most released files are). Returns ``path``.
    """
    path = Path(path)
    if fmt is None:
        fmt = "ckpt" if path.suffix.lower() in (".ckpt", ".pt", ".pth") else "safetensors"
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', not {fmt!r}")
    sd = checkpoint_state_dict(source, family, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    return path
