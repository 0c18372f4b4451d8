"""Models for tests: a tiny, deterministic SD 2.x pipeline folder, and full-size
architectures on the meta device.

The built-ins ``builtin:tiny-sd1`` / ``builtin:tiny-sdxl`` cover SD 1.x and SDXL. The SD 2.x
builder works the same way: random weights from a fixed seed, a generated tokenizer (no
download), and the *shape rules* of the real model scaled down, so that every code path
that depends on the family (text encoder kind, pad token, linear vs 1x1 projections) runs:

SD 2.x (``tiny_sd2_folder``), after stabilityai/stable-diffusion-2-1:

* text encoder: an OpenCLIP-style ``CLIPTextModel`` — ``gelu`` (SD1 uses ``quick_gelu``),
  width 64 (SD1's tiny one is 32, as 1024 vs 768), 2 layers;
* tokenizer: SD2's pad token ``"!"`` (id 0), so PAD ≠ EOS as in the real SD2 tokenizer —
  what the long-prompt window fix-ups (kohya-compat.md §5.4) are for;
* U-Net: ``use_linear_projection=True`` (Linear ``proj_in`` / ``proj_out``), widths
  ``(64, 128)`` and a per-level ``attention_head_dim`` list (diffusers reads it as heads per
  level: SD2's ``[5, 10, 20, 20]`` over 320…1280 channels; here ``[1, 2]``), cross-attention
  width = text width;
* heads: 64 channels per head in the U-Net and the text encoder, as in SD 2.x. Shapes do not
  tell head counts, so a single-file loader takes that rule from the family; the tiny model
  follows it, so its single-file form computes exactly what the folder form does;
* scheduler: DDPM with ``prediction_type`` ``v_prediction`` when ``v_pred`` (SD 2.x 768-v),
  else ``epsilon`` (SD 2.x 512-base).

All widths are multiples of 32 (GroupNorm with 32 groups). :func:`full_size_meta` builds the
real SD 1.5 / SD 2.1 / SDXL architectures on the meta device. Nothing here touches the
network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lora_core.families.sd.builtin import (
    save_text_encoder,
    small_vae,
    training_noise_scheduler,
    write_model_index,
)
from lora_core.models.tokenizer_gen import BOS_TOKEN, EOS_TOKEN, write_tokenizer

SEED = 20240602
# Part of the folder name: bump when the build changes, so a kept test cache
# (LORA_TUI_TEST_CACHE_DIR) never serves an old build.
BUILD_VERSION = 1
SD2_TEXT_WIDTH = 64
SD2_TEXT_LAYERS = 2
SD2_PAD_TOKEN = "!"  # stabilityai/stable-diffusion-2 tokenizer: pad_token "!" (id 0)


def _write_sd2_tokenizer(folder: Path) -> dict[str, int]:
    """A generated CLIP tokenizer that pads with ``"!"`` as SD 2.x's does; returns its vocab."""
    write_tokenizer(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((folder / name).read_text("utf-8"))
        data["pad_token"] = SD2_PAD_TOKEN
        (folder / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")
    return json.loads((folder / "vocab.json").read_text("utf-8"))


def _text_config(vocab: dict[str, int], width: int, layers: int, act: str, pad_token: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=layers, num_attention_heads=width // 64,
        max_position_embeddings=77, hidden_act=act,
        projection_dim=width,
        bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[pad_token],
    )


def tiny_sd2_folder(tmp_path: Path, v_pred: bool = False) -> Path:
    """Build a tiny SD 2.x diffusers folder under ``tmp_path`` and return it.

    Same seed, same bits on every call. ``v_pred`` picks the 768-v flavour (v-prediction
    scheduler, ``upcast_attention`` as SD 2.1-v's U-Net config has it).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    name = "tiny-sd2-768-v" if v_pred else "tiny-sd2-512"
    folder = Path(tmp_path) / f"{name}-b{BUILD_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    vocab = _write_sd2_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(64, 128),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(1, 2), cross_attention_dim=SD2_TEXT_WIDTH,
            use_linear_projection=True, upcast_attention=v_pred, norm_num_groups=32,
        )
        # SD 1.x, 2.x and XL share the VAE architecture (SDXL only rescales the latents).
        vae = small_vae(sample_size=64, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(_text_config(vocab, SD2_TEXT_WIDTH, SD2_TEXT_LAYERS,
                                                  "gelu", SD2_PAD_TOKEN))
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    save_text_encoder(text_encoder, folder / "text_encoder")
    training_noise_scheduler("v_prediction" if v_pred else "epsilon").save_pretrained(
        folder / "scheduler")
    write_model_index(folder)  # last: its presence marks a complete folder
    return folder


def full_size_meta(family: str) -> dict:
    """The full-size SD 1.5 / SD 2.1 / SDXL base parts, built on the ``meta`` device from the
    shipped configs (``lora_core/families/sd/configs``): real module names and shapes, no memory,
    no forward pass. Returns ``{"unet", "vae", "text_encoder"[, "text_encoder_2"]}``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_core.families.sd.configs import init_kwargs, load_config

    with torch.device("meta"):
        parts = {
            "unet": UNet2DConditionModel(**init_kwargs(load_config(family, "unet"))),
            "vae": AutoencoderKL(**init_kwargs(load_config(family, "vae"))),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig(**init_kwargs(load_config(family, "text_encoder")))),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(**init_kwargs(load_config(family, "text_encoder_2"))))
    return parts


def with_text(bundle, clip_skip: int | None = 1, max_token_length: int = 75):
    """``bundle`` reading captions another way (the bundle owns clip_skip and
    max_token_length, ``families.TextSettings``); the models are shared, not copied."""
    import dataclasses

    from lora_core.models.bundle import TextSettings

    return dataclasses.replace(bundle, text=TextSettings(clip_skip or 1, max_token_length))
