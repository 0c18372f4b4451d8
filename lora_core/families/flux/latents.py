"""Flux's latent space: the 16-channel autoencoder (``ae``), its scale/shift, and packing.

* The AE is BFL's (``ae.safetensors``: ``encoder.*`` / ``decoder.*`` in the LDM layout, no
  quant convs), run here as diffusers' ``AutoencoderKL`` built from the file's shapes
  (channels, levels, blocks per level, latent channels) with our own BFL↔diffusers key map.
* ``latents = scale · (z − shift)`` with scale 0.3611 and shift 0.1159; decoding inverts it.
  Encoding samples the posterior, as BFL's ``DiagonalGaussian`` does in training.
* The DiT sees 2×2 patches of the latent as tokens: (B, C, 2h, 2w) -> (B, h·w, C·4), channel
  major within a token, and each token's position id (0, row, column).

The key map is checked against diffusers' own LDM converter in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lora_core.errors import ModelError

AE_SCALE = 0.3611
AE_SHIFT = 0.1159
LATENT_CHANNELS = 16
DOWNSCALE = 8  # pixels per latent cell (per side)
PATCH = 2  # latent cells per token side
PIXELS_PER_TOKEN = DOWNSCALE * PATCH  # 16: image sides must be multiples of this


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, 2h, 2w) -> (B, h·w, C·2·2), token order row-major, features (c, dy, dx)."""
    b, c, hh, ww = x.shape
    h, w = hh // PATCH, ww // PATCH
    x = x.reshape(b, c, h, PATCH, w, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, h * w, c * PATCH * PATCH)


def unpack_latents(x: Tensor, packed_h: int, packed_w: int) -> Tensor:
    """Inverse of ``pack_latents``: (B, h·w, C·4) -> (B, C, 2h, 2w)."""
    b, _, feats = x.shape
    c = feats // (PATCH * PATCH)
    x = x.reshape(b, packed_h, packed_w, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, packed_h * PATCH, packed_w * PATCH)


def image_ids(batch_size: int, packed_h: int, packed_w: int) -> Tensor:
    """(B, h·w, 3) position ids: (0, row, column) of each token."""
    ids = torch.zeros(packed_h, packed_w, 3)
    ids[..., 1] = torch.arange(packed_h)[:, None]
    ids[..., 2] = torch.arange(packed_w)[None, :]
    return ids.reshape(1, packed_h * packed_w, 3).expand(batch_size, -1, -1).clone()


def text_ids(batch_size: int, length: int) -> Tensor:
    """T5 tokens all sit at position (0, 0, 0)."""
    return torch.zeros(batch_size, length, 3)


# --- the autoencoder -------------------------------------------------------------------


@dataclass(frozen=True)
class AeConfig:
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int


def ae_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str = "ae") -> AeConfig:
    """Read the AE's widths and depths from BFL-layout shapes."""
    try:
        ch = shapes["encoder.conv_in.weight"][0]
        z_channels = shapes["decoder.conv_in.weight"][1]
    except KeyError:
        raise ModelError(f"{where}: not a Flux autoencoder (no encoder.conv_in / "
                         "decoder.conv_in tensors)",
                         "pass BFL's ae.safetensors (16 latent channels)") from None
    levels = sorted({int(m.group(1)) for k in shapes
                     if (m := re.match(r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight$", k))})
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels)
    blocks = len({m.group(1) for k in shapes
                  if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    return AeConfig(ch, mult, blocks, z_channels)


def _diffusers_ae(config: AeConfig):
    from diffusers import AutoencoderKL

    n = len(config.ch_mult)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.num_res_blocks, latent_channels=config.z_channels,
        norm_num_groups=32, scaling_factor=AE_SCALE, shift_factor=AE_SHIFT,
        use_quant_conv=False, use_post_quant_conv=False)


_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def bfl_to_diffusers_key(key: str, num_levels: int) -> str:
    """One BFL/LDM autoencoder key -> diffusers' AutoencoderKL key."""
    rules = [
        (r"(encoder|decoder)\.mid\.block_(\d)\.(\w+)\.(weight|bias)$",
         lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_RESNET[m[3]]}.{m[4]}"),
        (r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$",
         lambda m: f"{m[1]}.mid_block.attentions.0.{_ATTN[m[2]]}.{m[3]}"),
        (r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$",
         lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_RESNET[m[3]]}.{m[4]}"),
        (r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$",
         lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
        (r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}."
                   f"{_RESNET[m[3]]}.{m[4]}"),
        (r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"),
        (r"(encoder|decoder)\.norm_out\.(weight|bias)$", lambda m: f"{m[1]}.conv_norm_out.{m[2]}"),
        (r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)$",
         lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
    ]
    for pattern, build in rules:
        if m := re.match(pattern, key):
            return build(m)
    raise ValueError(f"autoencoder key '{key}' is not part of BFL's AE layout")


def diffusers_to_bfl_ae(state: dict, num_levels: int) -> dict:
    """diffusers AutoencoderKL state dict -> BFL ``ae.safetensors`` keys (attention
    projections back to 1x1 convs)."""
    reverse = {bfl_to_diffusers_key(k, num_levels): k for k in _all_bfl_ae_keys(num_levels)}
    out = {}
    for key, tensor in state.items():
        bfl = reverse.get(key)
        if bfl is None:
            raise ValueError(f"diffusers autoencoder key '{key}' has no BFL counterpart")
        if ".attn_1." in bfl and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[bfl] = tensor
    return out


def _all_bfl_ae_keys(num_levels: int, max_blocks: int = 8) -> list[str]:
    """Every key BFL's AE layout can have with ``num_levels`` levels."""
    keys = []
    for part in ("encoder", "decoder"):
        for s in ("conv_in", "conv_out", "norm_out"):
            keys += [f"{part}.{s}.{w}" for w in ("weight", "bias")]
        for i in (1, 2):
            keys += [f"{part}.mid.block_{i}.{r}.{w}" for r in _RESNET for w in ("weight", "bias")]
        keys += [f"{part}.mid.attn_1.{a}.{w}" for a in _ATTN for w in ("weight", "bias")]
    for level in range(num_levels):
        for j in range(max_blocks):
            for r in _RESNET:
                for w in ("weight", "bias"):
                    keys.append(f"encoder.down.{level}.block.{j}.{r}.{w}")
                    keys.append(f"decoder.up.{level}.block.{j}.{r}.{w}")
        for w in ("weight", "bias"):
            keys.append(f"encoder.down.{level}.downsample.conv.{w}")
            keys.append(f"decoder.up.{level}.upsample.conv.{w}")
    return keys


def load_ae(path: Path, *, dtype=torch.float32, where: str = "ae"):
    """BFL ``ae.safetensors`` -> diffusers AutoencoderKL (eval, frozen) with Flux's
    scale/shift in its config."""
    from safetensors import safe_open

    from lora_core.models.headers import read_entries

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{where}: {path} does not exist",
                         "give the path of the Flux autoencoder (ae.safetensors)")
    _, entries, _ = read_entries(path)
    shapes = {k: e[1] for k, e in entries.items()}
    config = ae_config_from_shapes(shapes, where=f"{where}: {path.name}")
    if config.z_channels != LATENT_CHANNELS:
        raise ModelError(f"{where}: {path.name} has {config.z_channels} latent channels, "
                         f"Flux's autoencoder has {LATENT_CHANNELS}",
                         "this is an SD/SDXL VAE; pass Flux's ae.safetensors")
    ae = _diffusers_ae(config)
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            try:
                target = bfl_to_diffusers_key(key, len(config.ch_mult))
            except ValueError:
                continue  # quant convs and other extras Flux's AE does not use
            tensor = handle.get_tensor(key).to(dtype)
            if ".attentions.0." in target and tensor.ndim == 4:
                tensor = tensor[:, :, 0, 0]
            state[target] = tensor
    missing, unexpected = ae.load_state_dict(state, strict=False)
    if missing:
        raise ModelError(f"{where}: {path.name} lacks {len(missing)} autoencoder tensors, "
                         f"e.g. '{missing[0]}'", "the file is incomplete; download it again")
    if dtype != torch.float32:  # built in fp32; loading copied the values already
        ae = ae.to(dtype)
    return ae.eval().requires_grad_(False)


def encode(ae, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Pixels in [-1, 1] -> scaled latents ``scale·(z − shift)`` (posterior sample)."""
    z = ae.encode(images.to(ae.dtype)).latent_dist.sample(generator)
    return (z - AE_SHIFT) * AE_SCALE


def decode(ae, latents: Tensor) -> Tensor:
    """Scaled latents -> pixels in [-1, 1] (clamped)."""
    z = latents.to(ae.dtype) / AE_SCALE + AE_SHIFT
    return ae.decode(z).sample.clamp(-1, 1)
