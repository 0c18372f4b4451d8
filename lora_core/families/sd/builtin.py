"""The SD built-in models: tiny, randomly initialised pipelines built from config in code
(``models.builtin`` lists every built-in and asks its family for its folder).

``builtin:tiny-sd1`` is an SD1-shaped Stable Diffusion pipeline (about 1.5 M parameters) that
lets the trainer, the end-to-end tests and a first-time user run the whole LoRA workflow in
seconds on a CPU with no download. Its weights are random, so its images are noise; its module
names, layer kinds and file layout are those of a real SD1 model, so a LoRA trained on it is a
valid SD1 LoRA file that diffusers and sd-scripts load.

``builtin:tiny-sdxl`` does the same for SDXL: two tiny text encoders (a ``CLIPTextModel`` and
a ``CLIPTextModelWithProjection`` whose tokenizer pads with ``!``, id 0, like SDXL's
OpenCLIP tokenizer), an SDXL-shaped U-Net (three levels, the first without attention, two
layers per block, so its original-layout block numbers are SDXL's; linear ``proj_in/out``;
``text_time`` added conditioning) and a VAE with SDXL's scaling factor 0.13025, saved as a
``StableDiffusionXLPipeline`` folder.

The model is built once into ``cache_dir()/builtin/<name>-v<N>/`` as a complete diffusers
folder and reused. The build is deterministic (fixed seed, fixed configs, generated
tokenizer), so every machine builds the same bits. A build happens in a temporary folder that
is renamed into place, so two processes racing cannot leave a half-written model.

This module must not download anything and must not print.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_core.atomic import atomic_folder
from lora_core.errors import ModelError, OutputError
from lora_core.models.tokenizer_gen import BOS_TOKEN, EOS_TOKEN, MODEL_MAX_LENGTH, write_tokenizer
from lora_core.paths import cache_dir

# Bump when anything that changes the built files changes (configs, seed, tokenizer words).
BUILD_VERSION = 1
SEED = 20240601

TEXT_ENCODER_HIDDEN = 32
# Two layers, as in the tiny model that sd-scripts was checked against (84 LoRA modules);
# clip_skip 2 still differs from clip_skip 1: it uses the first layer's output.
TEXT_ENCODER_LAYERS = 2

# tiny-sdxl: the two text encoders have different widths so that a swapped or missing one
# shows in the context width (32 + 48 = 80).
SDXL_TE1_HIDDEN = 32
SDXL_TE2_HIDDEN = 48
SDXL_TE2_PROJECTION = 32
SDXL_TIME_EMBED_DIM = 16  # per size number; the real model uses 256
SDXL_VAE_SCALE = 0.13025
SDXL_PAD_TOKEN = "!"  # OpenCLIP's tokenizer pads with id 0 ("!"), not with EOS


def sd_builtin_folder(name: str, cache_root: Path | None = None) -> Path:
    """Where the SD built-in ``name`` is (or will be) cached as a diffusers folder."""
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / "builtin" / f"{name}-v{BUILD_VERSION}"


def ensure_sd_builtin(name: str, cache_root: Path | None = None) -> Path:
    """The diffusers folder of the SD built-in ``name``, built on first use."""
    final = sd_builtin_folder(name, cache_root)
    if final.is_dir():
        if not (final / "model_index.json").is_file():
            raise ModelError(f"the cached built-in model {final} is incomplete",
                             "delete that folder; it is rebuilt on the next run")
        return final
    try:
        # Built into a hidden folder and renamed into place: an interrupted build never
        # leaves a half model; when another process finished first, its folder is used.
        atomic_folder(final, _BUILDERS[name])
    except OutputError as exc:
        raise ModelError(f"cannot build the built-in model in {final.parent}: {exc.message}",
                         "set LORA_TUI_CACHE_DIR to a folder you can write to, with free "
                         "space") from None
    return final


def sd1_text_config(vocab_size: int, hidden: int = TEXT_ENCODER_HIDDEN,
                    num_layers: int = TEXT_ENCODER_LAYERS, num_heads: int = 4,
                    max_positions: int = MODEL_MAX_LENGTH):
    """An SD1-style CLIP text tower (quick_gelu, pads with EOS) for a generated tokenizer."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_positions,
        hidden_act="quick_gelu",
        projection_dim=hidden,
        # The generated tokenizer puts the two specials last; pooling looks for the EOS id.
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def small_vae(*, sample_size: int, scaling_factor: float,
              block_out_channels: tuple[int, ...] = (32, 32, 32, 32), layers_per_block: int = 1):
    """An SD-topology VAE (4 levels, 8x down, 4 latent channels) with small widths; every
    width a multiple of 32 so GroupNorm(32) and single-file export work."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def training_noise_scheduler(prediction_type: str = "epsilon"):
    """The DDPM schedule SD1/SD2 were trained with; sd-scripts always trains with it
    (``v_prediction`` for SD 2.x 768-v models)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )


def _build_tiny_sd1(folder: Path) -> None:
    """Build the tiny SD1 pipeline into the empty ``folder``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    vocab_size = write_tokenizer(folder / "tokenizer")
    tokenizer_vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text("utf-8"))
    assert tokenizer_vocab[BOS_TOKEN] == vocab_size - 2
    assert tokenizer_vocab[EOS_TOKEN] == vocab_size - 1

    # fork_rng keeps the caller's global RNG state untouched by our fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8,  # latents of 8x8 -> 64 px images by default
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_ENCODER_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = small_vae(sample_size=64, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(sd1_text_config(vocab_size))

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    save_text_encoder(text_encoder, folder / "text_encoder")
    training_noise_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder)


def _build_tiny_sdxl(folder: Path) -> None:
    """Build the tiny SDXL pipeline into the empty ``folder``."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab_size = write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    _use_pad_token(folder / "tokenizer_2", SDXL_PAD_TOKEN)

    def text_config(hidden: int, act: str, pad_token_id: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
            num_hidden_layers=TEXT_ENCODER_LAYERS, num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH, hidden_act=act,
            projection_dim=SDXL_TE2_PROJECTION, bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1, pad_token_id=pad_token_id)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=16,  # latents of 16x16 -> 128 px images by default
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(32, 32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10)
            attention_head_dim=(2, 2, 4),  # diffusers reads these as head counts, as SDXL's
            cross_attention_dim=SDXL_TE1_HIDDEN + SDXL_TE2_HIDDEN,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + SDXL_TE2_PROJECTION,
            norm_num_groups=32,
        )
        vae = small_vae(sample_size=128, scaling_factor=SDXL_VAE_SCALE)
        text_encoder = CLIPTextModel(text_config(SDXL_TE1_HIDDEN, "quick_gelu", vocab_size - 1))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(SDXL_TE2_HIDDEN, "gelu", 0))

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    save_text_encoder(text_encoder, folder / "text_encoder")
    save_text_encoder(text_encoder_2, folder / "text_encoder_2")
    training_noise_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder, xl=True)


def _use_pad_token(folder: Path, pad_token: str) -> None:
    """Make a generated tokenizer pad with ``pad_token`` instead of EOS."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        config = json.loads(path.read_text("utf-8"))
        config["pad_token"] = pad_token
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def save_text_encoder(text_encoder, folder: Path) -> None:
    """Save a ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` with ``text_model.``-prefixed
    keys (``text_projection.weight`` as it is).

    transformers >= 5.6 names a CLIPTextModel's weights ``encoder.layers.N...`` (no
    ``text_model`` wrapper) and strips the prefix when loading; transformers 4.x needs the
    prefix and would load unprefixed weights as random ones with only a warning. Prefixed keys
    load in both. Only the config goes through save_pretrained; the weights are written here.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(folder)
    state = {}
    for key, tensor in text_encoder.state_dict().items():
        if not key.startswith(("text_model.", "text_projection.")):
            key = f"text_model.{key}"
        state[key] = tensor.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_model_index(folder: Path, xl: bool = False) -> None:
    """model_index.json as ``StableDiffusionPipeline`` (no safety checker) or
    ``StableDiffusionXLPipeline``'s save_pretrained writes it (keys in sorted order)."""
    import diffusers

    index: dict[str, object] = {
        "_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if xl:
        index.update(force_zeros_for_empty_prompt=True,
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    else:
        index.update(requires_safety_checker=False, safety_checker=[None, None])
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                             "utf-8")


_BUILDERS = {"tiny-sd1": _build_tiny_sd1, "tiny-sdxl": _build_tiny_sdxl}
