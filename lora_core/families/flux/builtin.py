"""``tiny-flux``: a Flux.1-dev-shaped model small enough to train on a CPU in seconds.

Written as the four files a Flux user has, so every loading path is the real one:

* ``flux1-tiny-dev.safetensors``: the DiT in Black Forest Labs' layout (2 double + 2 single
  blocks, width 64, 4 heads of 16, guidance_in: a "dev" model);
* ``ae.safetensors``: a 16-latent-channel autoencoder in BFL's layout (4 levels of 32
  channels, 1 resnet per level, 8x down);
* ``clip_l.safetensors``: a CLIP text tower (width 64, one head of 64, 2 layers) with
  ``text_model.*`` keys;
* ``t5xxl.safetensors``: a T5 encoder (width 48, 2 heads, gated GELU, 2 layers);
* ``chroma-tiny.safetensors``: a Chroma DiT of the same sizes (a 2-layer distilled guidance
  layer instead of the modulation weights), trained with ae + t5xxl only.

The two widths differ (CLIP 64, T5 48) so a swapped encoder shows in the DiT's input widths.
Tokenizers are generated (``tokenizer_clip_l/``: CLIP BPE from ``models/tokenizer_gen``;
``tokenizer_t5xxl/``: a Unigram vocabulary of the same words plus single characters), so
nothing is downloaded. Weights are random with a fixed seed: the build is deterministic.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.atomic import atomic_folder
from lora_core.errors import ModelError, OutputError
from lora_core.families.flux.config import FluxConfig, default_axes_dim
from lora_core.models.tokenizer_gen import WORDS, write_tokenizer
from lora_core.paths import cache_dir

NAME = "tiny-flux"
BUILD_VERSION = 1
SEED = 20250801
DIT_FILE = "flux1-tiny-dev.safetensors"
CHROMA_FILE = "chroma-tiny.safetensors"  # the same sizes as Chroma (no CLIP-L needed)
AE_FILE = "ae.safetensors"
CLIP_L_FILE = "clip_l.safetensors"
T5_FILE = "t5xxl.safetensors"
CLIP_TOKENIZER_DIR = "tokenizer_clip_l"
T5_TOKENIZER_DIR = "tokenizer_t5xxl"
# The built-in names a profile can give and the DiT file of each (one folder holds both).
BUILTIN_FLUX = {NAME: DIT_FILE, "tiny-chroma": CHROMA_FILE}

CLIP_HIDDEN = 64
T5_HIDDEN = 48
TINY_CONFIG = FluxConfig(in_channels=64, vec_in_dim=CLIP_HIDDEN, context_in_dim=T5_HIDDEN,
                         hidden_size=64, mlp_ratio=4.0, num_heads=4, depth=2,
                         depth_single_blocks=2, axes_dim=default_axes_dim(16),
                         qkv_bias=True, guidance_embed=True)
TINY_CHROMA_CONFIG = FluxConfig(**{**TINY_CONFIG.__dict__, "vec_in_dim": 0,
                                   "guidance_embed": False, "approximator": (16, 32, 2)})


def t5_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary: T5's three specials first (pad 0, eos 1,
    unk 2), whole words with the ``▁`` word-start mark, then single characters."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = [(f"▁{w}", -1.0 - i / 1000) for i, w in enumerate(dict.fromkeys(WORDS))]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"()-_/"
    singles = [("▁", -5.0)] + [(c, -10.0 - i / 100) for i, c in enumerate(chars)]
    return specials + words + singles


def write_t5_tokenizer(folder: Path) -> int:
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast(vocab=t5_vocab(), extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


def build_tiny_flux(folder: Path) -> None:
    """Write the four files and two tokenizer folders into the empty ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, T5EncoderModel

    from lora_core.families.flux.latents import AeConfig, _diffusers_ae, diffusers_to_bfl_ae
    from lora_core.families.flux.model import Flux
    from lora_core.families.flux.text import clip_config_from_shapes, t5_config_from_shapes

    folder = Path(folder)
    clip_vocab = write_tokenizer(folder / CLIP_TOKENIZER_DIR)
    t5_vocab_size = write_t5_tokenizer(folder / T5_TOKENIZER_DIR)
    clip_shapes = {"text_model.embeddings.token_embedding.weight": (clip_vocab, CLIP_HIDDEN),
                   "text_model.embeddings.position_embedding.weight": (77, CLIP_HIDDEN),
                   "text_model.encoder.layers.0.mlp.fc1.weight": (4 * CLIP_HIDDEN, CLIP_HIDDEN),
                   "text_model.encoder.layers.1.mlp.fc1.weight": (4 * CLIP_HIDDEN, CLIP_HIDDEN)}
    t5_shapes = {"shared.weight": (t5_vocab_size, T5_HIDDEN),
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
                 "encoder.block.0.layer.0.SelfAttention.q.weight": (T5_HIDDEN, T5_HIDDEN),
                 "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (2 * T5_HIDDEN,
                                                                       T5_HIDDEN),
                 "encoder.block.1.layer.0.SelfAttention.q.weight": (T5_HIDDEN, T5_HIDDEN)}
    meta = {"format": "pt"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        dit = Flux(TINY_CONFIG)
        chroma = Flux(TINY_CHROMA_CONFIG)
        ae = _diffusers_ae(AeConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                                    z_channels=16))
        clip = CLIPTextModel(clip_config_from_shapes(clip_shapes))
        t5 = T5EncoderModel(t5_config_from_shapes(t5_shapes))
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
              str(folder / DIT_FILE), metadata=meta)
    save_file({k: v.contiguous() for k, v in chroma.state_dict().items()},
              str(folder / CHROMA_FILE), metadata=meta)
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl_ae(ae.state_dict(), 4).items()},
              str(folder / AE_FILE), metadata=meta)
    save_file({(k if k.startswith("text_model.") else f"text_model.{k}"): v.contiguous()
               for k, v in clip.state_dict().items()}, str(folder / CLIP_L_FILE), metadata=meta)
    save_file({k: v.contiguous() for k, v in t5.state_dict().items()
               if k != "encoder.embed_tokens.weight"}, str(folder / T5_FILE), metadata=meta)


def tiny_flux_folder(cache_root: Path | None = None) -> Path:
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / "builtin" / f"{NAME}-v{BUILD_VERSION}"


def ensure_tiny_flux(cache_root: Path | None = None) -> Path:
    """The folder of the built tiny Flux, built on first use (atomically)."""
    final = tiny_flux_folder(cache_root)
    if final.is_dir():
        if not (final / T5_FILE).is_file():
            raise ModelError(f"the cached built-in model {final} is incomplete",
                             "delete that folder; it is rebuilt on the next run")
        return final
    try:
        atomic_folder(final, build_tiny_flux)
    except OutputError as exc:
        raise ModelError(f"cannot build the built-in model in {final.parent}: {exc.message}",
                         "set LORA_TUI_CACHE_DIR to a folder you can write to") from None
    return final
