"""The benchmark's base models: SD1.5 topology with random weights, built from config offline.

Both models have SD1.5's *shape* — a ``UNet2DConditionModel`` with four levels (three
``CrossAttnDownBlock2D`` and a ``DownBlock2D``, mirrored on the way up), two ResNet layers per
block, one transformer layer per attention block, 1×1-conv ``proj_in``/``proj_out``; a 12-layer
CLIP text encoder; a four-level ``AutoencoderKL`` with scaling factor 0.18215 — so the LoRA
targets, the number of modules and the call graph of one step are those of a real SD1.5
run. Only the widths differ:

* ``BENCH_TINY``: small widths, picked so one step at 64 px on a 2-core CPU costs about as
  much as the anchors of issue 7 (0.06–0.11 s/step); see bench/RESULTS.md for the measurement.
* ``BENCH_FULL``: SD1.5's real widths (320/640/1280/1280, a 768-wide CLIP, a 128…512 VAE),
  random weights, opt-in (``--full-size``): slow to build (about 10 s) and to train.

Every U-Net and VAE width is a multiple of 32 (GroupNorm(32), as in single-file checkpoints).
The tokenizer is the engine's generated CLIP BPE vocabulary (about 520 tokens), so the
embedding table is smaller than SD1.5's 49,408 rows; nothing else depends on it.

The folder is a plain diffusers ``StableDiffusionPipeline`` folder, built with the engine's own
helpers (``lora_core.families.sd.builtin``) into a temporary folder and renamed into place. This
module downloads nothing and measures nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_core.atomic import atomic_folder

SEED = 1234
MAX_POSITIONS = 77


@dataclass(frozen=True)
class BenchModelConfig:
    """Widths of an SD1.5-topology model. The block types and depths are fixed (SD1.5's)."""

    name: str
    unet_channels: tuple[int, int, int, int]
    unet_head_dim: int           # diffusers' ``attention_head_dim`` (read as heads for SD1)
    text_hidden: int             # CLIP width = the U-Net's cross_attention_dim
    text_heads: int
    text_layers: int
    vae_channels: tuple[int, int, int, int]
    vae_layers_per_block: int
    sample_size: int             # latent size the config advertises (64 px → 8)

    def key(self) -> str:
        """A short hash of the config: a changed width gets a new cache folder."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# Measured on the 2-core bench machine (RESULTS.md): about 0.05-0.08 s per step at 64 px.
BENCH_TINY = BenchModelConfig(
    name="sd15-topology-tiny",
    unet_channels=(32, 64, 96, 96),
    unet_head_dim=8,
    text_hidden=64,
    text_heads=4,
    text_layers=12,
    vae_channels=(32, 32, 64, 64),
    vae_layers_per_block=1,
    sample_size=8,
)

# SD1.5's real widths (v1-inference.yaml): model_channels 320, mult 1/2/4/4, 8 heads,
# context 768; CLIP ViT-L/14 text tower 768 wide, 12 heads, 12 layers; VAE 128/256/512/512.
BENCH_FULL = BenchModelConfig(
    name="sd15-topology-full",
    unet_channels=(320, 640, 1280, 1280),
    unet_head_dim=8,
    text_hidden=768,
    text_heads=12,
    text_layers=12,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    sample_size=64,
)


def check_widths(config: BenchModelConfig) -> None:
    """Refuse widths that GroupNorm(32) or the attention heads cannot split."""
    for width in (*config.unet_channels, *config.vae_channels):
        if width % 32:
            raise ValueError(f"{config.name}: width {width} is not a multiple of 32 "
                             "(GroupNorm(32) in SD checkpoints)")
    if config.text_hidden % config.text_heads:
        raise ValueError(f"{config.name}: text_hidden {config.text_hidden} is not divisible by "
                         f"text_heads {config.text_heads}")


def build_model(folder: Path, config: BenchModelConfig) -> None:
    """Write the diffusers folder of ``config`` into the empty ``folder`` (deterministic)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from lora_core.families.sd.builtin import (
        save_text_encoder,
        sd1_text_config,
        small_vae,
        training_noise_scheduler,
        write_model_index,
    )
    from lora_core.models.tokenizer_gen import write_tokenizer

    check_widths(config)
    vocab_size = write_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=config.sample_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=config.unet_channels,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=config.text_hidden,
            attention_head_dim=config.unet_head_dim,
            norm_num_groups=32,
        )
        vae = small_vae(sample_size=8 * config.sample_size, scaling_factor=0.18215,
                        block_out_channels=config.vae_channels,
                        layers_per_block=config.vae_layers_per_block)
        text_encoder = CLIPTextModel(sd1_text_config(
            vocab_size, hidden=config.text_hidden, num_layers=config.text_layers,
            num_heads=config.text_heads, max_positions=MAX_POSITIONS))
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    save_text_encoder(text_encoder, folder / "text_encoder")
    training_noise_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder)


def ensure_model(cache_root: Path, config: BenchModelConfig) -> Path:
    """The model folder of ``config`` under ``cache_root``, built on first use.

    """
    final = Path(cache_root) / "models" / f"{config.name}-{config.key()}"
    if (final / "model_index.json").is_file():
        return final
    # Built into a hidden folder renamed into place: an interrupted build never leaves a
    # half-written model that a later run would load.
    atomic_folder(final, lambda tmp: build_model(tmp, config), replace=True)
    return final


def parameter_counts(folder: Path) -> dict[str, int]:
    """Parameters per component, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    counts = {}
    for part in ("unet", "text_encoder", "vae"):
        total = 0
        for file in sorted((folder / part).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    shape = fh.get_slice(key).get_shape()
                    n = 1
                    for dim in shape:
                        n *= dim
                    total += n
        counts[part] = total
    return counts
