"""SD single-file checkpoints: tell SD 1.x, SD 2.x and SDXL apart, read the architecture
from tensor shapes, and turn it into diffusers configs (the header is read by
``models.headers``).

A checkpoint from A1111 / ComfyUI carries weights only. Which model it is comes from the key
prefixes (kohya-compat.md §11, note): ``conditioner.embedders.1.model.*`` (OpenCLIP bigG) is
SDXL, ``cond_stage_model.model.*`` (OpenCLIP ViT-H) is SD 2.x, ``cond_stage_model.transformer.*``
(CLIP ViT-L) is SD 1.x. How big each part is comes from the shapes, the way ComfyUI's
``model_detection.py`` reads them: the width of ``input_blocks.0.0`` is the model channels, the
output width of each level's resnets gives the channel multipliers, the resnets per level give
``layers_per_block``, the ``transformer_blocks.N`` under a block give the transformer depth (0:
no attention on that level), ``attn2.to_k`` gives the context width and a 2-D ``proj_in`` means
linear projections. What shapes cannot tell (attention head counts, activation functions,
prediction type) comes from the family's shipped config (``configs/``) or the profile.

Pure Python (``json`` and ``struct``): ``lora-train check`` and the wizard run this without
torch. A ``.safetensors`` header is 8 bytes of little-endian length and that much JSON; only
the header is read, never the tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.families.sd.configs import init_kwargs, load_config

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SD2_TE_PREFIX = "cond_stage_model.model."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
TEXT_PREFIXES = {"sd1": (SD1_TE_PREFIX,), "sd2": (SD2_TE_PREFIX,),
                 "sdxl": (SDXL_TE1_PREFIX, SDXL_TE2_PREFIX)}
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# Tensors a checkpoint may carry that belong to no part we load: EMA copies, the LDM
# trainer's noise-schedule buffers, CLIP's position ids (recomputed), OpenCLIP's logit scale.
# (and the prediction markers below, read from the header on their own).
_IGNORABLE = re.compile(
    r"^(model_ema\.|denoiser\.|betas$|alphas_cumprod|sqrt_|log_one_minus|posterior_|"
    r"logvar$|lvlb_weights$|v_pred$|ztsnr$)|\.position_ids$|\.logit_scale$|"
    r"^cond_stage_model\.model\.attn_mask$")


@dataclass(frozen=True)
class UNetArch:
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    layers_per_block: int
    transformer_depth: tuple[int, ...]  # per level; 0 = no attention on that level
    mid_depth: int
    context_dim: int
    linear_proj: bool
    adm_in_channels: int | None  # SDXL's size/pooled-text vector width (label_emb)


@dataclass(frozen=True)
class VaeArch:
    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int


@dataclass(frozen=True)
class TextEncoderArch:
    kind: str  # "clip" (HF layout) or "open_clip" (fused in_proj, resblocks)
    prefix: str
    width: int
    layers: int  # in the model we build (SD 2.x drops OpenCLIP's last block)
    intermediate: int
    vocab: int
    positions: int
    projection: int | None  # OpenCLIP text_projection width (SDXL's pooled output)


@dataclass(frozen=True)
class Architecture:
    family: str
    unet: UNetArch
    vae: VaeArch | None
    text_encoders: tuple[TextEncoderArch, ...]
    missing: tuple[str, ...] = ()  # parts the file lacks: "vae", "text encoder" ...
    ignored: tuple[str, ...] = field(default=())  # prefixes of tensors no part uses


def detect_family(shapes: Mapping[str, tuple[int, ...]], path: Path) -> str:
    """"sd1" / "sd2" / "sdxl" from the key prefixes; ModelError for anything else."""
    keys = list(shapes)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has(SDXL_TE2_PREFIX):
        return "sdxl"
    if has(SD2_TE_PREFIX):
        return "sd2"
    if has(SD1_TE_PREFIX):
        return "sd1"
    if not has(UNET_PREFIX):
        raise _not_a_base_model(keys, path)
    if has("conditioner.embedders.0.model."):
        raise ModelError(f"{path} is an SDXL refiner checkpoint; a refiner cannot be trained "
                         "as a base model", "give an SDXL base checkpoint")
    # No text encoder inside: tell the family from the U-Net's context width, to say
    # precisely what is missing.
    context = _context_dim(shapes, keys)
    family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(context or 0)
    what = f"an {FAMILY_NAMES[family]} U-Net" if family else "a U-Net"
    raise ModelError(
        f"{path} holds {what} but no text encoder (no {' / '.join(_te_prefixes(family))}* "
        "tensors); the text encoder was pruned from this file",
        "use the full checkpoint (U-Net, text encoder and VAE in one file) or the model's "
        "diffusers folder")


def _te_prefixes(family: str | None) -> tuple[str, ...]:
    return TEXT_PREFIXES.get(family or "", (SD1_TE_PREFIX, SD2_TE_PREFIX, SDXL_TE2_PREFIX))


def _not_a_base_model(keys: list[str], path: Path) -> ModelError:
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) for k in keys):
        return ModelError(f"{path} is a LoRA file, not a base model",
                          "set `[model] pretrained_model_name_or_path` to the checkpoint the "
                          "LoRA is for; a LoRA to continue from goes in `[network] "
                          "network_weights`")
    if any(k.startswith(("encoder.", "decoder.", VAE_PREFIX)) for k in keys):
        return ModelError(f"{path} is a VAE, not a base model",
                          "give it as `[model] vae`, and a full checkpoint as the base model")
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return ModelError(f"{path} is a lone diffusers U-Net file, not a full checkpoint",
                          "give the diffusers folder it belongs to (with model_index.json)")
    return ModelError(f"{path} is not a Stable Diffusion checkpoint (no "
                      f"{UNET_PREFIX}* tensors; {len(keys)} tensors in all)",
                      "give an SD 1.x / SD 2.x / SDXL checkpoint as A1111 or ComfyUI use them")


def _context_dim(shapes: Mapping[str, tuple[int, ...]], keys: list[str]) -> int | None:
    for key in keys:
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return shapes[key][1]
    return None


def _count(keys: list[str], prefix: str) -> int:
    """How many numbered children ``prefix<N>.`` the keys have (max N + 1)."""
    numbers = {int(m.group(1)) for k in keys if k.startswith(prefix)
               for m in [re.match(r"(\d+)\.", k[len(prefix):])] if m}
    return max(numbers) + 1 if numbers else 0


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, part: str, path: Path
          ) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelError(f"{path} is missing {part} weights (no tensor {key!r})",
                         "the checkpoint is incomplete or not a standard SD checkpoint; use "
                         "the original file")
    return shapes[key]


def read_unet(shapes: Mapping[str, tuple[int, ...]], path: Path) -> UNetArch:
    """The U-Net's architecture from ``model.diffusion_model.*`` shapes (ComfyUI's rules)."""
    p = UNET_PREFIX
    keys = [k for k in shapes if k.startswith(p)]
    conv_in = _need(shapes, f"{p}input_blocks.0.0.weight", "U-Net", path)
    out = _need(shapes, f"{p}out.2.weight", "U-Net", path)
    _need(shapes, f"{p}time_embed.0.weight", "U-Net", path)
    model_channels = conv_in[0]
    counts: list[int] = []
    mults: list[int] = []
    depths: list[int] = []
    resnets = 0
    mult = 1
    depth = 0
    for i in range(1, _count(keys, f"{p}input_blocks.")):
        block = f"{p}input_blocks.{i}."
        if f"{block}0.op.weight" in shapes:  # a downsampler closes the level
            counts.append(resnets)
            mults.append(mult)
            depths.append(depth)
            resnets, depth = 0, 0
            continue
        width = _need(shapes, f"{block}0.out_layers.3.weight", "U-Net resnet", path)[0]
        resnets += 1
        mult = width // model_channels
        depth = max(depth, _count(keys, f"{block}1.transformer_blocks."))
    counts.append(resnets)
    mults.append(mult)
    depths.append(depth)
    if len(set(counts)) != 1 or counts[0] == 0:
        raise ModelError(f"{path} has a U-Net with {counts} resnets per level",
                         "only U-Nets with the same number of resnets on every level "
                         "(as SD 1.x / 2.x / SDXL) can be loaded")
    mid_depth = _count(keys, f"{p}middle_block.1.transformer_blocks.")
    proj = next((shapes[k] for k in keys if k.endswith(".proj_in.weight")), None)
    context = _context_dim(shapes, keys)
    if context is None:
        raise ModelError(f"{path} has a U-Net without cross-attention",
                         "this is not a text-to-image Stable Diffusion U-Net")
    label = shapes.get(f"{p}label_emb.0.0.weight")
    return UNetArch(conv_in[1], out[0], model_channels, tuple(mults), counts[0], tuple(depths),
                    mid_depth, context, proj is not None and len(proj) == 2,
                    label[1] if label else None)


def read_vae(shapes: Mapping[str, tuple[int, ...]], prefix: str, path: Path) -> VaeArch:
    """The VAE's architecture from ``<prefix>encoder/decoder.*`` shapes."""
    keys = [k for k in shapes if k.startswith(prefix)]
    conv_in = _need(shapes, f"{prefix}encoder.conv_in.weight", "VAE", path)
    decoder_in = _need(shapes, f"{prefix}decoder.conv_in.weight", "VAE", path)
    decoder_out = _need(shapes, f"{prefix}decoder.conv_out.weight", "VAE", path)
    levels = _count(keys, f"{prefix}encoder.down.")
    widths = tuple(_need(shapes, f"{prefix}encoder.down.{i}.block.0.conv1.weight", "VAE",
                         path)[0] for i in range(levels))
    return VaeArch(conv_in[1], decoder_out[0], decoder_in[1], widths,
                   _count(keys, f"{prefix}encoder.down.0.block."))


def read_text_encoder(shapes: Mapping[str, tuple[int, ...]], prefix: str, family: str,
                      path: Path) -> TextEncoderArch:
    """A text encoder's width and depth: HF CLIP layout (SD1, SDXL's first) or OpenCLIP."""
    keys = [k for k in shapes if k.startswith(prefix)]
    if prefix in (SD2_TE_PREFIX, SDXL_TE2_PREFIX):
        tokens = _need(shapes, f"{prefix}token_embedding.weight", "text encoder", path)
        positions = _need(shapes, f"{prefix}positional_embedding", "text encoder", path)
        blocks = _count(keys, f"{prefix}transformer.resblocks.")
        fc = _need(shapes, f"{prefix}transformer.resblocks.0.mlp.c_fc.weight", "text encoder",
                   path)
        projection = shapes.get(f"{prefix}text_projection")
        # SD 2.x conditions on OpenCLIP's penultimate block, so the last one is never used:
        # diffusers and sd-scripts build the encoder with 23 of its 24 blocks (§11).
        layers = blocks - 1 if family == "sd2" else blocks
        return TextEncoderArch("open_clip", prefix, tokens[1], layers, fc[0], tokens[0],
                               positions[0], projection[1] if projection else None)
    inner = f"{prefix}text_model." if any(k.startswith(f"{prefix}text_model.")
                                          for k in keys) else prefix
    tokens = _need(shapes, f"{inner}embeddings.token_embedding.weight", "text encoder", path)
    positions = _need(shapes, f"{inner}embeddings.position_embedding.weight", "text encoder",
                      path)
    fc = _need(shapes, f"{inner}encoder.layers.0.mlp.fc1.weight", "text encoder", path)
    return TextEncoderArch("clip", prefix, tokens[1], _count(keys, f"{inner}encoder.layers."),
                           fc[0], tokens[0], positions[0], None)


def read_architecture(shapes: Mapping[str, tuple[int, ...]], path: Path) -> Architecture:
    """Family and architecture of a single-file checkpoint from its keys and shapes."""
    family = detect_family(shapes, path)
    unet = read_unet(shapes, path)
    has_vae = any(k.startswith(VAE_PREFIX) for k in shapes)
    vae = read_vae(shapes, VAE_PREFIX, path) if has_vae else None
    missing = () if has_vae else ("VAE",)
    encoders = []
    for i, prefix in enumerate(TEXT_PREFIXES[family]):
        if not any(k.startswith(prefix) for k in shapes):
            raise ModelError(f"{path} is an SDXL checkpoint without its "
                             f"{'first' if i == 0 else 'second'} text encoder (no {prefix}* "
                             "tensors)", "use the full SDXL checkpoint")
        encoders.append(read_text_encoder(shapes, prefix, family, path))
    known = (UNET_PREFIX, VAE_PREFIX, *TEXT_PREFIXES[family])
    ignored = sorted({".".join(k.split(".")[:2]) + "." for k in shapes
                      if not k.startswith(known) and not _IGNORABLE.search(k)})
    return Architecture(family, unet, vae, tuple(encoders), missing, tuple(ignored))


def is_ignorable(key: str) -> bool:
    """A tensor no loaded part needs (EMA copy, schedule buffer, position ids ...)."""
    return bool(_IGNORABLE.search(key))


def summary(arch: Architecture) -> str:
    """One line for people, e.g. "SDXL single file, 2 text encoders, U-Net 320 ch"."""
    u = arch.unet
    encoders = len(arch.text_encoders)
    parts = [f"{FAMILY_NAMES[arch.family]} single file",
             f"{encoders} text encoder{'s' * (encoders != 1)} "
             f"({' + '.join(str(t.width) for t in arch.text_encoders)} wide)",
             f"U-Net {u.model_channels} ch x{list(u.channel_mult)}",
             f"context {u.context_dim}"]
    if arch.missing:
        parts.append(f"no {', '.join(arch.missing)} inside")
    if arch.ignored:
        parts.append(f"ignores {', '.join(arch.ignored)}*")
    return ", ".join(parts)


# --- diffusers configs ------------------------------------------------------------------


def _heads(family: str, width: int) -> int:
    """Attention heads: SD 1.x U-Nets use 8 per block; SD 2.x / SDXL U-Nets and all CLIP
    text encoders ("clip") use 64 channels per head.
    Shapes cannot tell heads apart, so these are the published models' rules."""
    if family == "sd1":
        return 8 if width % 8 == 0 else 1
    return max(1, width // 64) if width % 64 == 0 else 1


def unet_config(arch: Architecture) -> dict[str, Any]:
    """The diffusers ``UNet2DConditionModel`` config: the family's published config with
    everything the shapes tell put in."""
    u = arch.unet
    config = init_kwargs(load_config(arch.family, "unet"))
    widths = [u.model_channels * m for m in u.channel_mult]
    attention = [d > 0 for d in u.transformer_depth]
    config.update(
        in_channels=u.in_channels,
        out_channels=u.out_channels,
        block_out_channels=widths,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=u.context_dim,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D"
                        for a in reversed(attention)],
        use_linear_projection=u.linear_proj,
    )
    if arch.family == "sd1":
        config["attention_head_dim"] = _heads("sd1", widths[0])
    else:
        config["attention_head_dim"] = [_heads(arch.family, w) for w in widths]
    depths = [max(d, 1) for d in u.transformer_depth]
    if u.mid_depth != depths[-1] and not (u.mid_depth == 1 and set(depths) == {1}):
        raise ModelError(f"U-Net with mid-block depth {u.mid_depth} and level depths "
                         f"{list(u.transformer_depth)} cannot be built",
                         "only the SD 1.x / 2.x / SDXL block layouts are supported")
    if set(depths) != {1}:
        config["transformer_layers_per_block"] = depths
    if u.adm_in_channels is not None:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = u.adm_in_channels
        pooled = arch.text_encoders[-1].projection if arch.text_encoders else None
        if pooled and (u.adm_in_channels - pooled) % 6 == 0:
            # y = [pooled text, 6 size numbers x time-embedding width] (§10)
            config["addition_time_embed_dim"] = (u.adm_in_channels - pooled) // 6
    return config


def vae_config(family: str, vae: VaeArch) -> dict[str, Any]:
    config = init_kwargs(load_config(family, "vae"))
    levels = len(vae.block_out_channels)
    config.update(in_channels=vae.in_channels, out_channels=vae.out_channels,
                  latent_channels=vae.latent_channels,
                  block_out_channels=list(vae.block_out_channels),
                  layers_per_block=vae.layers_per_block,
                  down_block_types=["DownEncoderBlock2D"] * levels,
                  up_block_types=["UpDecoderBlock2D"] * levels)
    return config


def text_encoder_config(family: str, index: int, te: TextEncoderArch) -> dict[str, Any]:
    """``CLIPTextConfig`` kwargs: the family's published config with the shapes put in."""
    part = "text_encoder_2" if index == 1 else "text_encoder"
    config = init_kwargs(load_config(family, part))
    config.update(hidden_size=te.width, intermediate_size=te.intermediate,
                  num_hidden_layers=te.layers, num_attention_heads=_heads("clip", te.width),
                  vocab_size=te.vocab, max_position_embeddings=te.positions)
    if te.projection is not None and family == "sdxl":  # SD 2.x never uses its projection
        config["projection_dim"] = te.projection
    return config


def read_diffusers_vae(shapes: Mapping[str, tuple[int, ...]], path: Path) -> VaeArch:
    """A diffusers-format VAE state dict's architecture (``encoder.down_blocks.*``)."""
    keys = list(shapes)
    conv_in = _need(shapes, "encoder.conv_in.weight", "VAE", path)
    decoder_in = _need(shapes, "decoder.conv_in.weight", "VAE", path)
    decoder_out = _need(shapes, "decoder.conv_out.weight", "VAE", path)
    levels = _count(keys, "encoder.down_blocks.")
    widths = tuple(_need(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", "VAE",
                         path)[0] for i in range(levels))
    return VaeArch(conv_in[1], decoder_out[0], decoder_in[1], widths,
                   _count(keys, "encoder.down_blocks.0.resnets."))
