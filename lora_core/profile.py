"""The training profile: typed sections, their fields, defaults and docs.

A profile is everything one run needs. Keys use sd-scripts' argument names wherever the
concept is the same, so users' knowledge and configs carry over; defaults follow what users
of LoRA Easy Training Scripts expect (AdamW8bit, dim 32 / alpha 16, lr 1e-4,
cosine_with_restarts, 512 px, batch 1).

Each field is declared with :func:`setting`, which records its one-line doc, its allowed
range or choices, and whether it is a path. This module only declares: reading a profile
(``profile_load``) turns TOML into a :class:`Profile` in its resolved form (``resolution`` a
:class:`~lora_core.values.Resolution`, every path absolute), and the checks
(``lora_core.checks``) judge it. No file I/O, no torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.profile_fields import setting
from lora_core.profile_flux import (  # noqa: F401  (re-exported)
    FLUX_MODEL_TYPES,
    MODEL_PREDICTION_TYPES,
    TIMESTEP_SAMPLINGS,
    WEIGHTING_SCHEMES,
    FluxSection,
)
from lora_core.profile_keys import DYNAMO_BACKENDS, HARMLESS_KEYS, SD_SCRIPTS_KEYS, SECRET_KEYS
from lora_core.values import Resolution, describe_type

PROFILE_VERSION = 1


@dataclass(frozen=True)
class When:
    """A condition on another field: ``[section] key`` is one of ``values``. A choice that
    stands for several (``network_module = "lycoris.kohya"`` before its algo is read) holds
    when any of what it may become does (:data:`CHOICE_READS_AS`)."""

    section: str
    key: str
    values: tuple[str, ...]
    refused: bool = True  # the check refuses a value set where the condition fails

    def holds(self, value: Any) -> bool:
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if text in self.values:
            return True
        reads_as = CHOICE_READS_AS.get((self.section, self.key), {}).get(text, ())
        return any(v in self.values for v in reads_as)

    def describe(self) -> str:
        return " / ".join(self.values)


@dataclass
class ModelSection:
    """The base model."""

    pretrained_model_name_or_path: str = setting(
        "", "Base model: a single-file checkpoint (.safetensors or .ckpt, as A1111 and ComfyUI "
        "use), a local diffusers folder, a Flux.1 / Chroma transformer file (with the [flux] "
        "files), or builtin:tiny-sd1 / tiny-sdxl / tiny-flux for smoke runs. SD 1.x, SD 2.x, "
        "SDXL and Flux.1 are told apart from the weights.",
        path=True, required=True)
    v2: bool | None = setting(
        None, "The model is SD 2.x (unset: detected from the weights; set only to confirm, "
        "as sd-scripts' --v2).")
    vae: str = setting(
        "", "A separate VAE (.safetensors/.ckpt file or diffusers folder) to use instead of the "
        "model's own (empty: the model's).", path=True)
    no_half_vae: bool = setting(
        False, "Keep the VAE in float32 under fp16/bf16 (SDXL's VAE makes NaNs in fp16).")
    tokenizer_cache_dir: str = setting(
        "", "A folder holding the tokenizers (checkpoints do not contain them); searched before "
        "the Hugging Face cache.", path=True)
    clip_skip: int = setting(
        1, "Text-encoder layer to use counted from the end: 1 for realistic/base models, "
        "2 for anime (NovelAI-style) models.", min=1, max=12)
    v_parameterization: bool | None = setting(
        None, "The model predicts v instead of noise (SD 2.x 768-v models and v-pred "
        "finetunes). Unset: true when the model file carries a v_pred marker tensor "
        "(NoobAI-XL v-pred and others, as ComfyUI and Forge read it), else false; most "
        "weights cannot tell, so say it for those.")


# sd-scripts' resize_interpolation names ("" = its default rule); linear / cubic are aliases.
RESIZE_INTERPOLATIONS = ("", "lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic",
                         "area", "box")


@dataclass
class DatasetSection:
    """Where the images are and how they are read."""

    train_data_dir: str = setting(
        "", "Parent folder of the <repeats>_<trigger words> image folders (required unless "
        "dataset_config is set).", path=True)
    reg_data_dir: str = setting(
        "", "Parent folder of regularization image folders (empty: none).", path=True)
    resolution: Resolution = setting(
        Resolution(512, 512), "Training resolution: one number for square, or \"W,H\".")
    enable_bucket: bool = setting(
        True, "Group images by aspect ratio instead of cropping to a square.")
    min_bucket_reso: int = setting(256, "Smallest bucket side in pixels.", min=64)
    max_bucket_reso: int = setting(1024, "Largest bucket side in pixels.", min=64)
    bucket_reso_steps: int = setting(
        64, "Bucket sides are multiples of this (64 for SD 1.x/2.x, 32 or 64 for SDXL).", min=8)
    bucket_no_upscale: bool = setting(
        False, "Never enlarge small images; make buckets that fit them.")
    caption_extension: str = setting(".txt", "Caption files are <image name><this extension>.")
    dataset_config: str = setting(
        "", "An sd-scripts dataset config (.toml or .json) with [[datasets]] and "
        "[[datasets.subsets]]; replaces train_data_dir / reg_data_dir.", path=True)
    shuffle_caption: bool = setting(False, "Shuffle comma-separated tags on every step.")
    keep_tokens: int = setting(
        0, "Tags at the front that shuffling never moves (the trigger word).", min=0)
    keep_tokens_separator: str = setting(
        "", "Marks the end of the fixed tags inside a caption, e.g. \"|||\" (overrides "
        "keep_tokens); a second one starts fixed tags at the end.")
    caption_separator: str = setting(",", "What separates tags in a caption.")
    secondary_separator: str = setting(
        "", "Joins words into one tag for shuffling and dropout, e.g. \";;;\"; replaced by "
        "caption_separator afterwards.")
    caption_prefix: str = setting("", "Text put before every caption (joined with a space).")
    caption_suffix: str = setting("", "Text put after every caption (joined with a space).")
    caption_dropout_rate: float = setting(
        0.0, "Chance that a sample trains with an empty caption.", min=0.0, max=1.0)
    caption_dropout_every_n_epochs: int = setting(
        0, "Train every Nth epoch with empty captions (0: never).", min=0)
    caption_tag_dropout_rate: float = setting(
        0.0, "Chance that each non-fixed tag is left out of a step's caption.", min=0.0, max=1.0)
    enable_wildcard: bool = setting(
        False, "Use every line of a caption file (one picked per step) and {a|b|c} choices.")
    token_warmup_min: int = setting(
        1, "Token warm-up: tags used at the first step.", min=1)
    token_warmup_step: float = setting(
        0, "Token warm-up: steps until all tags are used, or a ratio of all steps below 1 "
        "(0: off).", min=0.0)
    max_token_length: int = setting(
        75, "Caption tokens the text encoder reads: 75, 150 or 225 (longer captions are cut).")
    resize_interpolation: str = setting(
        "", "How images are resized to their bucket: lanczos, nearest, bilinear, bicubic, "
        "area or box (empty: area when shrinking, lanczos when enlarging, as sd-scripts).",
        choices=RESIZE_INTERPOLATIONS)
    weighted_captions: bool = setting(
        False, "Read (word:1.2) / (word) / [word] in captions as prompt weights that scale "
        "those words' text embeddings (sd-scripts' --weighted_captions); the brackets are "
        "not trained as text.")
    flip_aug: bool = setting(False, "Mirror images left-right at random (not for asymmetric "
                             "characters or text).")
    color_aug: bool = setting(False, "Shift hue or gamma a little at random (no latent cache).")
    random_crop: bool = setting(
        False, "Crop at a random place instead of the centre (no latent cache).")
    alpha_mask: bool = setting(
        False, "Use each image's transparency as its loss mask: transparent parts are not "
        "trained on (images without an alpha channel count as opaque).")
    cache_latents: bool = setting(
        False, "Encode every image with the VAE once before training (faster, less memory).")
    cache_latents_to_disk: bool = setting(
        False, "Keep the latent cache on disk for the next run (implies cache_latents).")
    vae_batch_size: int = setting(1, "Images the VAE encodes at once while caching.", min=1,
                                  max=256)
    cache_text_encoder_outputs: bool = setting(
        False, "SDXL: encode every caption once before training (needs "
        "network_train_unet_only and captions that do not change between steps). Other "
        "models do this automatically whenever it gives the same result.")
    cache_text_encoder_outputs_to_disk: bool = setting(
        False, "Keep the text-encoder cache on disk for the next run (implies "
        "cache_text_encoder_outputs).")
    prior_loss_weight: float = setting(1.0, "Loss weight of regularization images.", min=0.0)
    max_data_loader_n_workers: int = setting(
        1, "Processes that load images while the GPU trains (0: load in the training process).",
        min=0, max=64)

    def __post_init__(self) -> None:
        # Built in code (tests, tools) with 512 or "768,512": the resolved form all the same.
        parsed = Resolution.parse(self.resolution)
        if parsed is not None:
            self.resolution = parsed


NETWORK_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr")
# The rest of the LyCORIS family (network_module "lycoris.kohya" with network_args algo=...):
# their maths is the lycoris-lora package's (DyLoRA's is ours: see network/lycoris_family).
LYCORIS_TYPES = ("DyLoRA", "Full", "IA3", "DiagOFT", "BOFT", "GLoRA")
ALL_NETWORK_TYPES = NETWORK_TYPES + LYCORIS_TYPES
# Types that support DoRA (dora_wd): LyCORIS' weight decomposition.
DORA_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr")
# LyCORIS' algo names (ss_network_args "algo"), by network type.
LYCORIS_ALGO_NAMES = {"LoRA": "lora", "LoCon": "locon", "LoHa": "loha", "LoKr": "lokr",
                      "DyLoRA": "dylora", "Full": "full", "IA3": "ia3", "DiagOFT": "diag-oft",
                      "BOFT": "boft", "GLoRA": "glora"}
# Types whose modules can cap their weight norm (scale_weight_norms).
MAX_NORM_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr", "DyLoRA", "DiagOFT", "BOFT")
# Types that train 3x3 convolutions (conv_dim): all but plain LoRA.
CONV_TYPES = tuple(t for t in ALL_NETWORK_TYPES if t != "LoRA")
# What a choice may stand for before the profile is read (profile_load reads sd-scripts'
# module names as a type): a field applies when it applies to any of them. networks.lora is
# LoRA here (with conv_dim it is read as LoCon, which the wizard asks as LoCon).
CHOICE_READS_AS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("network", "network_module"): {"networks.lora": ("LoRA",),
                                    "networks.dylora": ("DyLoRA",),
                                    "lycoris.kohya": ALL_NETWORK_TYPES}}


def _for_network(*types: str, refused: bool = True) -> When:
    return When("network", "network_module", types, refused)


@dataclass
class NetworkSection:
    """The LoRA network."""

    network_module: str = setting(
        "LoRA", "Network type: LoRA (attention layers), LoCon (+ convolutions), LoHa, LoKr, "
        "or LyCORIS' DyLoRA, Full, IA3, DiagOFT, BOFT (network_dim: block size), GLoRA. "
        "sd-scripts' networks.lora / networks.dylora / lycoris.kohya + algo= read as those.",
        choices=ALL_NETWORK_TYPES + ("networks.lora", "networks.dylora", "lycoris.kohya"))
    network_dim: int = setting(32, "LoRA rank: capacity of the adapter.", min=1, max=1024)
    network_alpha: float = setting(
        16.0, "LoRA alpha: updates are scaled by alpha / dim (half the dim is usual).", min=0.0)
    conv_dim: int | None = setting(
        None, "Rank for 3x3 convolutions (LoCon, LoHa, LoKr; unset: network_dim for those, "
        "none for LoRA).", min=1, max=1024, applies=_for_network(*CONV_TYPES))
    conv_alpha: float | None = setting(
        None, "Alpha for 3x3 convolutions (unset: network_alpha when conv_dim is unset too; "
        "with conv_dim set, 1 for LoCon as in sd-scripts and network_alpha for LoHa/LoKr as "
        "in LyCORIS).", min=0.0, applies=_for_network(*CONV_TYPES, refused=False))
    network_dropout: float | None = setting(
        None, "Dropout on the LoRA down projection's output (unset: none).", min=0.0, max=0.99)
    rank_dropout: float | None = setting(
        None, "Drop this share of rank channels per sample each step (unset: none).",
        min=0.0, max=0.99)
    module_dropout: float | None = setting(
        None, "Skip each LoRA module with this chance each step (unset: none).", min=0.0,
        max=0.99)
    factor: int = setting(
        -1, "LoKr: split each weight into a Kronecker product with this factor "
        "(-1: as balanced as possible).", min=-1, applies=_for_network("LoKr"))
    block_dims: str = setting(
        "", "Per-block ranks for LoRA/LoCon: 25 comma-separated numbers (BASE, 12 down, mid, "
        "12 up; 0 = no LoRA in that block), empty: network_dim everywhere.",
        applies=_for_network("LoRA", "LoCon"))
    block_alphas: str = setting(
        "", "Per-block alphas, same layout as block_dims (empty: network_alpha).",
        applies=_for_network("LoRA", "LoCon"))
    conv_block_dims: str = setting(
        "", "Per-block 3x3-convolution ranks, same layout as block_dims (empty: conv_dim).",
        applies=_for_network("LoCon"))
    conv_block_alphas: str = setting(
        "", "Per-block 3x3-convolution alphas, same layout (empty: conv_alpha).",
        applies=_for_network("LoCon"))
    dora_wd: bool = setting(
        False, "DoRA (weight-decomposed LoRA, LyCORIS' dora_wd): also train each weight's "
        "magnitude, saved as dora_scale (LoRA, LoCon, LoHa, LoKr).",
        applies=_for_network(*DORA_TYPES))
    dylora_unit: int = setting(
        4, "DyLoRA: ranks are trained in blocks of this size (sd-scripts' unit, LyCORIS' "
        "block_size); network_dim must be a multiple of it.", min=1,
        applies=_for_network("DyLoRA"))
    constraint: float = setting(
        0.0, "DiagOFT / BOFT: limit on how far the rotation may move (0: none).", min=0.0,
        applies=_for_network("DiagOFT", "BOFT"))
    rescaled: bool = setting(
        False, "DiagOFT / BOFT: also train a per-output rescale (LyCORIS' rescaled).",
        applies=_for_network("DiagOFT", "BOFT"))
    train_on_input: bool = setting(
        False, "IA3: scale the layers' inputs instead of their outputs.",
        applies=_for_network("IA3"))
    network_args: list[str] = setting(
        [], "sd-scripts' network_args (\"conv_dim=4\", \"algo=loha\", ...): each is read "
        "as the field of that name.")
    network_train_unet_only: bool = setting(False, "Train the U-Net only (no text-encoder LoRA).")
    network_train_text_encoder_only: bool = setting(False, "Train the text encoder only.")
    network_weights: str = setting(
        "", "Start from this existing LoRA .safetensors file (empty: fresh start).", path=True)
    dim_from_weights: bool = setting(
        False, "Take each module's rank and alpha from network_weights instead of "
        "network_dim / network_alpha (LoRA and LoCon files); only the file's modules train.")
    network_multiplier: float = setting(
        1.0, "Strength the LoRA is applied with while training (sd-scripts' "
        "network_multiplier; -1 trains the opposite direction). The saved file is the same "
        "whatever it is.")
    base_weights: list[str] = setting(
        [], "LoRA / LoCon files merged into the base model before training (differential "
        "training: the new LoRA learns what they do not); relative paths are taken from the "
        "profile's folder.")
    base_weights_multiplier: list[float] = setting(
        [], "Strength of each base_weights file, in the same order (missing: 1.0).")


SUPPORTED_OPTIMIZERS = (
    "AdamW", "AdamW8bit", "PagedAdamW8bit", "PagedAdamW", "PagedAdamW32bit", "Lion",
    "Lion8bit", "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation",
    "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP",
    "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor", "AdamWScheduleFree", "RAdamScheduleFree",
    "SGDScheduleFree",
)
# Optimizers that find their own step size: the learning rate is a multiplier (~1.0).
ADAPTIVE_OPTIMIZERS = ("DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam",
                       "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
              "polynomial", "adafactor", "inverse_sqrt", "cosine_with_min_lr",
              "warmup_stable_decay", "piecewise_constant")
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a",
            "dpmsolver", "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2",
            "k_dpm_2_a")


@dataclass
class OptimizerSection:
    """Optimizer and learning-rate schedule."""

    optimizer_type: str = setting(
        "AdamW8bit", "Optimizer: AdamW8bit (less memory), AdamW, Lion, Prodigy / DAdaptation "
        "(find their own step size: learning_rate 1.0), AdaFactor, AdamWScheduleFree (no "
        "schedule needed), ... or any optimizer by its import path, like \"torch.optim.RAdam\".",
        choices=SUPPORTED_OPTIMIZERS, or_import_path=True)
    optimizer_args: list[str] | None = setting(
        None, "Extra optimizer arguments as \"name=value\" strings (unset: weight_decay=0.1 "
        "and betas=0.9,0.99 for the AdamW optimizers, as LoRA Easy Training Scripts sets them; "
        "none for the others).")
    learning_rate: float = setting(
        1e-4, "Base learning rate (the optimizers that find their own step size multiply "
        "it, so 1.0 is theirs).", min=0.0,
        default_when=((When("optimizer", "optimizer_type", ADAPTIVE_OPTIMIZERS), 1.0),))
    unet_lr: float | None = setting(None, "U-Net learning rate (unset: learning_rate).", min=0.0)
    text_encoder_lr: float | tuple[float, float] | None = setting(
        None, "Text-encoder learning rate (unset: learning_rate); SDXL also takes two, "
        "[text encoder 1, text encoder 2], as sd-scripts' --text_encoder_lr A B.", min=0.0)
    lr_scheduler: str = setting(
        "cosine_with_restarts", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_warmup_steps: float = setting(
        0, "Warm-up: a number of steps, or a ratio of all steps when below 1.", min=0.0)
    lr_scheduler_num_cycles: int = setting(
        1, "Hard restarts for cosine_with_restarts.", min=1)
    lr_scheduler_power: float = setting(1.0, "Power of the polynomial schedule.", min=0.0)
    lr_decay_steps: float = setting(
        0, "warmup_stable_decay: steps of the final decay, or a ratio of all steps when "
        "below 1.", min=0.0)
    lr_scheduler_min_lr_ratio: float | None = setting(
        None, "cosine_with_min_lr (needed there) and warmup_stable_decay (unset: 0): the "
        "lowest rate as a share of the learning rate.", min=0.0, max=1.0)
    lr_scheduler_timescale: int | None = setting(
        None, "inverse_sqrt: after the warm-up the rate falls as 1/sqrt((step - warm-up + "
        "t) / t) for this t (unset: the warm-up steps, or 10000 without a warm-up).", min=1)
    lr_scheduler_type: str = setting(
        "", "Any other schedule class: a torch.optim.lr_scheduler name (\"StepLR\") or an "
        "import path; it replaces lr_scheduler and gets lr_scheduler_args (empty: none).")
    lr_scheduler_args: list[str] = setting(
        [], "Extra schedule arguments as \"name=value\" strings (values read as Python "
        "literals), for lr_scheduler_type or the named lr_scheduler (\"step_rules=...\" for "
        "piecewise_constant).")
    max_grad_norm: float = setting(1.0, "Clip gradients to this norm (0: no clipping).", min=0.0)
    fused_optimizer: bool = setting(
        True, "Use torch's fused kernel for AdamW / Adam (one kernel over all parameters "
        "instead of one per tensor: the optimizer step took 3 ms instead of 9 ms in "
        "bench/RESULTS.md); other optimizers ignore it.")
    scale_weight_norms: float | None = setting(
        None, "Max-norm regularisation: shrink any module whose update norm exceeds this "
        "(1.0 is usual; unset: off).", min=0.0, applies=_for_network(*MAX_NORM_TYPES))
    loraplus_lr_ratio: float | None = setting(
        None, "LoRA+: the up matrices learn this many times faster (16 is the paper's value; "
        "unset: off).", min=0.0)
    loraplus_unet_lr_ratio: float | None = setting(
        None, "LoRA+ ratio for the U-Net only (unset: loraplus_lr_ratio).", min=0.0)
    loraplus_text_encoder_lr_ratio: float | None = setting(
        None, "LoRA+ ratio for the text encoder only (unset: loraplus_lr_ratio).", min=0.0)
    down_lr_weight: str = setting(
        "", "U-Net down-block learning-rate multipliers: 12 comma-separated numbers, or "
        "sine / cosine / linear / reverse_linear / zeros, optionally +offset (empty: 1).")
    mid_lr_weight: str = setting("", "U-Net mid-block learning-rate multiplier (empty: 1).")
    up_lr_weight: str = setting(
        "", "U-Net up-block learning-rate multipliers, same forms as down_lr_weight.")
    block_lr_zero_threshold: float = setting(
        0.0, "Blocks whose learning-rate multiplier is at most this get no LoRA at all.",
        min=0.0)


@dataclass
class TrainingSection:
    """How long and how the training runs."""

    max_train_epochs: int | None = setting(
        None, "Epochs to train (unset: 1 epoch, unless max_train_steps is set).", min=1)
    max_train_steps: int | None = setting(
        None, "Optimizer steps to train; max_train_epochs wins when both are set.", min=1)
    train_batch_size: int = setting(1, "Images per step.", min=1, max=256)
    gradient_accumulation_steps: int = setting(1, "Steps whose gradients are summed per update.",
                                               min=1)
    gradient_checkpointing: bool = setting(False, "Trade speed for memory in the U-Net.")
    cpu_offload_checkpointing: bool = setting(
        False, "With gradient checkpointing, keep the saved block inputs in CPU memory "
        "(SD U-Nets and Flux: less VRAM at some speed cost, about 1 GB and ~15 % for Flux; "
        "nothing changes without a GPU; not with blocks_to_swap).")
    blocks_to_swap: int | None = setting(
        None, "Flux: keep this many transformer blocks in CPU memory, each moved to the GPU "
        "when it runs (about 640 MB less VRAM per block; needs gradient_checkpointing).",
        min=1, max=200)
    fp8_base: bool = setting(
        False, "Keep the frozen base model's weights in float8 (one byte each), each layer "
        "computed in the training precision: the U-Net / DiT, and SD's text encoders too "
        "(Flux: an fp8 T5 file stays fp8).")
    fp8_base_unet: bool = setting(
        False, "As fp8_base, for the U-Net / DiT only: the text encoders keep the training "
        "precision.")
    full_bf16: bool = setting(
        False, "Keep the LoRA weights and the optimizer state in bf16 instead of float32 "
        "(less memory; needs mixed_precision = \"bf16\"). With AdamW or AdamW8bit each "
        "update is computed in float32 and rounded stochastically into bf16, so small "
        "updates are not lost; other optimizers round to nearest.")
    full_fp16: bool = setting(
        False, "Keep the LoRA weights and the optimizer state in fp16 instead of float32 "
        "(less memory; needs mixed_precision = \"fp16\", so a CUDA GPU).")
    torch_compile: bool = setting(
        False, "Compile the U-Net's / DiT's repeated blocks with torch.compile, blocks of "
        "one type and width sharing one graph (the compiled code is kept between runs): "
        "faster steps after a first "
        "step that compiles (minutes); calibrate says whether it pays off for the run.")
    dynamo_backend: str = setting(
        "inductor", "The torch.compile backend with torch_compile (inductor: needs a C++ "
        "compiler on a CPU, Triton on a GPU).", choices=DYNAMO_BACKENDS,
        applies=When("training", "torch_compile", ("true",), refused=False))
    num_processes: int = setting(
        1, "Processes to train with, one per GPU: `lora-train run` starts them through "
        "accelerate's launcher (the total batch is batch x processes x accumulation).",
        min=1, max=64)
    gpu_ids: str = setting(
        "", "The GPUs to use with several processes, like \"0,1\" (empty: the first "
        "num_processes GPUs).")
    mixed_precision: str = setting(
        "fp16", "Compute precision: fp16 (most GPUs), bf16 (RTX 30xx and newer) or no.",
        choices=("no", "fp16", "bf16"))
    seed: int | None = setting(None, "Random seed (unset: a random one, recorded).", min=0,
                               max=2**32 - 1)
    noise_offset: float | None = setting(
        None, "Offset noise: darker darks and brighter brights (0.05-0.1 is usual; unset: "
        "off).", min=0.0)
    noise_offset_random_strength: bool = setting(
        False, "Scale the noise offset by a random 0-1 factor each step.")
    adaptive_noise_scale: float | None = setting(
        None, "Add this times each latent's mean brightness to the noise offset (needs "
        "noise_offset).")
    multires_noise_iterations: int | None = setting(
        None, "Multi-resolution (pyramid) noise levels (6-10 is usual; unset: off).", min=1)
    multires_noise_discount: float = setting(
        0.3, "Weight of each coarser pyramid-noise level.", min=0.0, max=1.0)
    ip_noise_gamma: float | None = setting(
        None, "Input perturbation: the noisy input gets this much extra noise that the target "
        "does not contain (0.1 is the paper's value; unset: off).", min=0.0)
    ip_noise_gamma_random_strength: bool = setting(
        False, "Scale the input perturbation by a random 0-1 factor each step.")
    v_pred_like_loss: float | None = setting(
        None, "Add this share of a v-prediction-like loss to an ε-prediction loss (not with "
        "v_parameterization; unset: off).", min=0.0)
    min_snr_gamma: float | None = setting(
        None, "Min-SNR loss weighting gamma (5 is the paper's value; unset: off).", min=0.0)
    scale_v_pred_loss_like_noise_pred: bool = setting(
        False, "v-prediction: weight the loss as an ε-prediction model would (needs "
        "v_parameterization).")
    debiased_estimation_loss: bool = setting(
        False, "Weight the loss by 1/√SNR (debiased estimation).")
    zero_terminal_snr: bool | None = setting(
        None, "Rescale the noise schedule so the last timestep is pure noise (for "
        "v-prediction models). Unset: true for a v-prediction model whose file carries a "
        "ztsnr marker tensor, else false.")
    min_timestep: int = setting(0, "Smallest timestep trained on.", min=0, max=999)
    max_timestep: int = setting(1000, "Timesteps trained on are below this.", min=0, max=1000)
    loss_type: str = setting(
        "l2", "Loss: l2 (mean squared error), l1, huber or smooth_l1.",
        choices=("l2", "l1", "huber", "smooth_l1"))
    huber_schedule: str = setting(
        "snr", "How the Huber threshold changes with the timestep.",
        choices=("constant", "exponential", "snr"))
    huber_c: float = setting(0.1, "Huber threshold parameter.", min=0.0, max=1.0)
    huber_scale: float = setting(1.0, "Scale of the Huber threshold.", min=0.0)
    masked_loss: bool = setting(
        False, "Train only where each image's mask is white: mask images from the "
        "conditioning_data_dir of dataset_config subsets (same file name, red channel), or "
        "the alpha channel with alpha_mask.")
    validation_split: float = setting(
        0.0, "Share of each training folder's images held out to measure validation loss "
        "(0.1 holds out one image in ten; regularization folders are never split; 0: no "
        "validation). Held-out images are never trained on.", min=0.0, max=1.0)
    validation_seed: int | None = setting(
        None, "Seed that picks the held-out images and the validation noise (unset: the "
        "seed, or 0 when that is unset too, so `check` and the run pick the same images).",
        min=0, max=2**32 - 1)
    validate_every_n_steps: int | None = setting(
        None, "Also measure validation loss every N steps (unset: only at epoch ends).", min=1)
    validate_every_n_epochs: int | None = setting(
        None, "Measure validation loss at the end of every N epochs (unset: every epoch).",
        min=1)
    max_validation_steps: int | None = setting(
        None, "Evaluate at most this many validation batches each time (unset: all).", min=1)
    early_stopping_patience: int | None = setting(
        None, "Stop the run, as finished, after this many validations in a row without a "
        "new lowest validation loss (needs validation_split; unset: never stop early). The "
        "best file, <output_name>-best.safetensors, is kept either way.", min=1)


@dataclass
class SavingSection:
    """Where and how the LoRA files are written."""

    output_dir: str = setting("", "Folder the LoRA files go to.", path=True, required=True)
    output_name: str = setting("last", "File name of the LoRA, without extension.")
    save_model_as: str = setting("safetensors", "File format.", choices=("safetensors",))
    save_precision: str = setting(
        "fp16", "Precision of the saved tensors.", choices=("float", "fp16", "bf16"))
    save_every_n_epochs: int | None = setting(
        None, "Also save a numbered file every N epochs (unset: only at the end).", min=1)
    save_every_n_steps: int | None = setting(
        None, "Also save a numbered file every N steps (unset: never).", min=1)
    save_n_epoch_ratio: int | None = setting(
        None, "Save about this many numbered epoch files over the run: save_every_n_epochs "
        "becomes epochs / N (at least 1); wins over save_every_n_epochs (unset: off).", min=1)
    save_last_n_epochs: int | None = setting(
        None, "Keep only the last N numbered epoch files; older ones are deleted (unset: "
        "keep all).", min=1)
    save_last_n_steps: int | None = setting(
        None, "Keep numbered step files only from the last N steps; older ones are deleted "
        "(unset: keep all).", min=1)
    save_last_n_epochs_state: int | None = setting(
        None, "Delete the training state saved with an epoch file N epoch files later "
        "(unset: save_last_n_epochs); save_last_n_states caps them too.", min=1)
    save_last_n_steps_state: int | None = setting(
        None, "Delete the training state saved with a step file once N steps passed "
        "(unset: save_last_n_steps); save_last_n_states caps them too.", min=1)
    save_state: bool = setting(
        True, "Save the full training state (optimizer, scheduler, RNG, position in the data) "
        "with every checkpoint, when the run is stopped, and every save_state_every_n_minutes, "
        "in the run folder; `lora-train resume RUN_FOLDER` continues exactly from it.")
    save_state_every_n_minutes: float | None = setting(
        30.0, "Also save the training state when this many minutes passed since the last one "
        "(unset: only with checkpoints and when stopped).", min=0.1)
    save_last_n_states: int = setting(
        2, "Keep this many training states; older ones are deleted once a newer one is "
        "complete.", min=1)
    save_state_on_train_end: bool = setting(
        False, "Also keep a training state when the run finishes (to train it further later "
        "with more epochs).")
    training_comment: str = setting("", "Text stored in the file (trigger words, notes).")
    metadata_title: str = setting(
        "", "Title stored in the file (modelspec.title; empty: output_name).")
    metadata_author: str = setting("", "Author stored in the file (modelspec.author).")
    metadata_description: str = setting(
        "", "Description stored in the file (modelspec.description; empty: "
        "training_comment).")
    metadata_license: str = setting("", "License stored in the file (modelspec.license).")
    metadata_tags: str = setting(
        "", "Comma-separated tags stored in the file (modelspec.tags).")
    no_metadata: bool = setting(
        False, "Store only what loading the file needs: the network type, dim, alpha and "
        "base model (ss_v2, ss_base_model_version, ss_network_*) and the modelspec keys; no "
        "dataset, tag counts or training settings (as sd-scripts' --no_metadata).")
    tag_summary: bool = setting(
        False, "Write <output_name>.txt listing every caption tag with its count.")
    tag_summary_order: str = setting(
        "count", "Order of the tag summary.", choices=("count", "alphabetical"))


@dataclass
class SampleSection:
    """Preview images during training."""

    sample_prompts: str = setting(
        "", "Prompt file (.txt with --n --w --h --d --l --s --ss options per line, .toml or "
        ".json); re-read at each sampling, so it can be edited during a run.", path=True)
    sample_every_n_steps: int | None = setting(
        None, "Make samples every N steps (ignored when sample_every_n_epochs is set).", min=1)
    sample_every_n_epochs: int | None = setting(
        None, "Make samples at the end of every N epochs.", min=1)
    sample_at_first: bool = setting(False, "Also make samples before the first step.")
    sample_sampler: str = setting("ddim", "Sampler for preview images.", choices=SAMPLERS)


NOTIFY_STATUSES = ("finished", "stopped", "failed")


@dataclass
class NotifySection:
    """Telling the user a run ended: a command to run and/or a webhook to POST to."""

    command: str = setting(
        "", "Command run when the run ends (through the shell), with LORA_TRAIN_STATUS, "
        "LORA_TRAIN_RUN_DIR, LORA_TRAIN_FILE, LORA_TRAIN_BEST_FILE and LORA_TRAIN_MESSAGE in "
        "its environment (empty: none).")
    webhook: str = setting(
        "", "URL that gets an HTTP POST of a JSON summary (with `text` and `content`, so "
        "ntfy, Slack- and Discord-style endpoints take it), or \"$VARIABLE\" to read the URL "
        "from the environment so no secret sits in the profile (empty: none).")
    on: list[str] = setting(
        ["finished", "stopped", "failed"], "Which endings notify: finished, stopped, failed.")


TRACKERS = ("", "tensorboard", "wandb", "all")


@dataclass
class LoggingSection:
    """Training curves for TensorBoard or Weights & Biases, under sd-scripts' names."""

    log_with: str = setting(
        "", "Where to log the loss and learning rates: \"tensorboard\", \"wandb\" (needs "
        "the wandb package and a login), \"all\", or \"\" for none.", choices=TRACKERS)
    logging_dir: str = setting(
        "", "Folder for the logs (empty: a \"logs\" folder in output_dir); each run writes "
        "a sub-folder named log_prefix + the start time.", path=True)
    log_prefix: str = setting("", "Text put before the time in each run's log folder name.")
    log_tracker_name: str = setting(
        "", "The tracker's run name (empty: \"network_train\", as sd-scripts).")


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "flux": FluxSection,
    "dataset": DatasetSection,
    "network": NetworkSection,
    "optimizer": OptimizerSection,
    "training": TrainingSection,
    "saving": SavingSection,
    "sample": SampleSection,
    "logging": LoggingSection,
    "notify": NotifySection,
}

NOT_YET_KEYS = SD_SCRIPTS_KEYS - {f.name for cls in SECTIONS.values()
                                   for f in dataclasses.fields(cls)} - set(HARMLESS_KEYS) \
    - set(SECRET_KEYS)
NOT_YET_SECTIONS: frozenset[str] = frozenset()
# Sections left out of a saved profile while they hold only defaults (a model family's own).
OPTIONAL_SECTIONS = ("flux",)
BUILTIN_PREFIX = "builtin:"
# Fields that hold a list of paths (made absolute like the path fields, one by one).
PATH_LIST_FIELDS = (("network", "base_weights"),)


@dataclass
class Profile:
    """Everything one training run needs, in the resolved form reading a profile gives:
    path fields hold absolute paths, ``[dataset] resolution`` a Resolution. ``base_dir`` is
    the folder relative paths were taken from (the profile file's; not saved)."""

    profile_version: int = PROFILE_VERSION
    model: ModelSection = field(default_factory=ModelSection)
    flux: FluxSection = field(default_factory=FluxSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    saving: SavingSection = field(default_factory=SavingSection)
    sample: SampleSection = field(default_factory=SampleSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    notify: NotifySection = field(default_factory=NotifySection)
    base_dir: Path = field(default_factory=Path.cwd, compare=False, repr=False)

    def path(self, section: str, key: str) -> Path | None:
        """The path a path field names, or None when it is empty or a built-in model.
        Loaded profiles hold absolute paths already (``profile_load.resolve_paths``)."""
        value = getattr(getattr(self, section), key)
        if value in ("", None) or str(value).startswith(BUILTIN_PREFIX):
            return None
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path


def uses_lycoris(net: NetworkSection) -> bool:
    """Whether the network's modules are the lycoris-lora package's: DoRA, and the LyCORIS
    types but DyLoRA (network/lycoris_family.py). Plain LoRA/LoCon/LoHa/LoKr and DyLoRA are
    this project's own modules."""
    kind = net.network_module
    return (kind in LYCORIS_TYPES and kind != "DyLoRA") or (kind in DORA_TYPES and net.dora_wd)


def conv_rank_and_alpha(net: NetworkSection) -> tuple[int | None, float | None]:
    """(rank, alpha) for 3x3 convolutions, or (None, None) when none are trained.

    * LoRA: none (``conv_dim`` is refused by the profile check).
    * LoCon, LoHa, LoKr with ``conv_dim`` unset: ``network_dim`` and (``conv_alpha`` unset)
      ``network_alpha`` — LyCORIS' defaults (its kohya wrapper reads
      ``conv_dim = network_dim``, ``conv_alpha = network_alpha``).
    * ``conv_dim`` set, ``conv_alpha`` unset: 1 for LoCon, as sd-scripts' networks.lora
      (``conv_alpha`` defaults to 1 there); ``network_alpha`` for LoHa / LoKr (LyCORIS).
    """
    if net.network_module == "LoRA" or (net.network_module == "DyLoRA"
                                         and net.conv_dim is None):
        return None, None
    if net.conv_alpha is not None:
        alpha = float(net.conv_alpha)
    elif net.conv_dim is not None and net.network_module == "LoCon":
        alpha = 1.0
    else:
        alpha = float(net.network_alpha)
    return (net.conv_dim if net.conv_dim is not None else net.network_dim), alpha


# When each conditional field applies (its ``applies`` declaration): the checks refuse a
# value set where it does not, the wizard hides the field.
FIELD_CONDITIONS: dict[tuple[str, str], When] = {
    (name, f.name): f.metadata["applies"] for name, cls in SECTIONS.items()
    for f in dataclasses.fields(cls) if f.metadata.get("applies") is not None}


def conditional_default(section: str, key: str, value_of: Callable[[str, str], Any]) -> Any:
    """The default a field's ``default_when`` gives with the other answers
    (``value_of(section, key)``), or None when no condition holds (the declared default
    applies)."""
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    return next((value for when, value in f.metadata.get("default_when", ())
                 if when.holds(value_of(when.section, when.key))), None)


SECTION_FIELD_DOC: dict[str, dict[str, str]] = {
    name: {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}
    for name, cls in SECTIONS.items()}


# ----------------------------------------------------------------------------------------
# Conversion back to plain data


def section_to_dict(section: Any) -> dict[str, Any]:
    """Plain TOML-ready values; None (unset) is left out because TOML has no null."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        if isinstance(value, Resolution):
            value = value.to_toml()
        out[f.name] = list(value) if isinstance(value, list) else value
    return out


def profile_to_dict(p: Profile) -> dict[str, Any]:
    data: dict[str, Any] = {"profile_version": p.profile_version}
    for name in SECTIONS:
        if name in OPTIONAL_SECTIONS and getattr(p, name) == SECTIONS[name]():
            continue  # an SD profile has no [flux] table
        data[name] = section_to_dict(getattr(p, name))
    return data


def field_docs() -> list[tuple[str, str, str, Any, str]]:
    """(section, key, type, default, doc) for every field: the source of `lora-train fields`."""
    rows = []
    for sec_name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata["doc"]
            if f.metadata["choices"]:
                shown = ", ".join(c or '""' for c in f.metadata["choices"])  # "" = unset
                doc += f" Choices: {shown}."
            if isinstance(default, Resolution):
                default = default.to_toml()
            rows.append((sec_name, f.name, describe_type(hints[f.name]), default, doc))
    return rows
