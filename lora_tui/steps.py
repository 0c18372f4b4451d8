"""The wizard's questions, one step per screen, in the order LoRA Easy Training Scripts'
popup asked them (wizard-anchors.md §a): base model, images, output, regularization,
optimizer, network, learning rates, scheduler, resolution, batch, length, saving, captions,
augmentation, precision, loss tweaks, sample prompts; then review.

A step names the profile fields it asks by default (``fields``) and the fields it reveals on
"advanced" (``advanced``); between them, every profile field is reachable on exactly one
step (:func:`unreachable_fields` is empty, and a test checks it). How each field is drawn
and checked comes from the profile's own metadata (``draft.field_spec``).

Two more kinds of data live here, because they are about the questions, not the profile:

* :data:`CONDITIONS`: fields that only mean something for some answers (conv dim for
  LoCon and friends, as the profile's fields declare it: ``profile.FIELD_CONDITIONS``;
  restarts for cosine_with_restarts...). They are hidden, never disabled,
  and (unless marked ``keep``) their text is left out of the profile while hidden, so a
  value typed for LoCon does not make a LoRA profile invalid.
* :data:`WIZARD_QUESTIONS`: questions that are not profile fields but write one (the
  "realistic or anime" choice writes ``clip_skip``; typed sample prompts become a prompt
  file when the profile is saved). Their section is ``"wizard"``.

No textual, no torch: pure data and small predicates over a draft.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lora_core.families.flux.checks import MEANINGLESS_FOR_FLUX
from lora_core.family_registry import family
from lora_core.profile import FIELD_CONDITIONS, SECTIONS, When
from lora_core.profile_flux import LORA_FLUX_ARGS

if TYPE_CHECKING:
    from lora_tui.draft import Draft

FieldKey = tuple[str, str]
WIZARD = "wizard"  # section name of the wizard-only questions


@dataclass(frozen=True)
class Step:
    title: str
    intro: str
    fields: tuple[FieldKey, ...]
    advanced: tuple[FieldKey, ...] = ()
    dataset_check: bool = False  # show the live dataset check under the fields
    model_check: bool = False  # show what the base model is, live, under its path


@dataclass(frozen=True)
class Condition:
    """When a field applies. ``keep``: its text still goes into the profile while hidden
    (for fields that only confirm something detected, such as ``v2``)."""

    applies: Callable[[Draft], bool]
    keep: bool = False


def _is(section: str, key: str, *values: str) -> Callable[[Draft], bool]:
    return lambda draft: draft.current(section, key) in values


def _set(section: str, key: str) -> Callable[[Draft], bool]:
    return lambda draft: draft.current(section, key) != ""


def _declared(when: When) -> Callable[[Draft], bool]:
    return lambda draft: when.holds(draft.current(when.section, when.key))


def _for_flux(section: str, key: str, *, when: Callable[[Draft], bool] | None = None,
              file: bool = False) -> Condition:
    """A ``[flux]`` field (or a setting only Flux uses): shown for a Flux base model
    (``when``: and when it means something with the other answers), hidden for SD models,
    where its text is left out of the profile (the check refuses those values there).
    ``file``: one of the three files, not asked for a built-in (empty: the built-in's own)
    nor, for clip_l, for Chroma. For a Flux model (or one that cannot be read yet) an
    answered field stays in sight and in the profile, where the check says what is wrong
    with it: nothing typed is dropped without a word."""

    def applies_now(draft: Draft) -> bool:
        answered = draft.text(section, key) != ""
        model = draft.flux_model()
        if model is None:
            return answered and draft.model_family() is None
        if file and (model.builtin or not model.uses(key)):
            return answered
        return when is None or when(draft) or answered

    return Condition(applies_now)


def _lever(key: str, when: Callable[[Draft], bool] | None = None) -> Condition:
    """A ``[training]`` memory lever: asked where the base model's family has it (its
    ``levers``: fp8 for SD and Flux, block swap for Flux), and ``when`` holds; an answered
    one stays in sight and in the profile wherever it is, where the check says what is
    wrong with it (nothing typed is dropped without a word)."""

    def applies_now(draft: Draft) -> bool:
        answered = draft.text("training", key) != ""
        name = draft.model_family()
        if name is None:
            return answered
        return answered or (key in family(name).levers and (when is None or when(draft)))

    return Condition(applies_now)


def _not_flux(section: str, key: str) -> Condition:
    """An SD-only field of the model step (the check refuses it for Flux, and says why):
    hidden for a Flux model unless it holds a value, which stays in sight to be removed."""
    return Condition(lambda draft: draft.flux_model() is None or draft.text(section, key) != "",
                     keep=True)


_SAMPLING = ("flux", "timestep_sampling")
FLUX_CONDITIONS: dict[FieldKey, Condition] = {
    **{("flux", key): _for_flux("flux", key, file=True) for key in ("ae", "clip_l", "t5xxl")},
    **{("flux", key): _for_flux("flux", key) for key in (
        "model_type", "apply_t5_attn_mask", "t5xxl_max_token_length", "timestep_sampling",
        "model_prediction_type", "weighting_scheme")},
    ("flux", "guidance_scale"): _for_flux(  # dev only: schnell and Chroma take none
        "flux", "guidance_scale",
        when=lambda d: getattr(d.flux_model(), "variant", "") not in ("schnell", "chroma")),
    ("flux", "sigmoid_scale"): _for_flux("flux", "sigmoid_scale",
                                         when=_is(*_SAMPLING, "sigmoid", "shift")),
    ("flux", "discrete_flow_shift"): _for_flux("flux", "discrete_flow_shift",
                                               when=_is(*_SAMPLING, "sigma", "shift")),
    ("flux", "logit_mean"): _for_flux("flux", "logit_mean",
                                      when=_is("flux", "weighting_scheme", "logit_normal")),
    ("flux", "logit_std"): _for_flux("flux", "logit_std",
                                     when=_is("flux", "weighting_scheme", "logit_normal")),
    ("flux", "mode_scale"): _for_flux("flux", "mode_scale",
                                      when=_is("flux", "weighting_scheme", "mode")),
    # networks.lora_flux's arguments (which blocks, per-type ranks), on the network step.
    **{("flux", key): _for_flux("flux", key) for key in LORA_FLUX_ARGS},
    # Memory levers, where the model's family has them (the check refuses them elsewhere):
    # fp8 base weights and CPU-offloaded checkpointing (SD and Flux); block swap (Flux);
    # the last two with checkpointing.
    ("training", "fp8_base"): _lever("fp8_base"),
    ("training", "fp8_base_unet"): _lever("fp8_base_unet"),
    # The LoRA and its optimizer state in half precision: with that mixed precision only.
    ("training", "full_bf16"): Condition(
        lambda d: d.current("training", "mixed_precision") == "bf16"
        or d.text("training", "full_bf16") != "", keep=True),
    ("training", "full_fp16"): Condition(
        lambda d: d.current("training", "mixed_precision") == "fp16"
        or d.text("training", "full_fp16") != "", keep=True),
    ("training", "blocks_to_swap"): _lever(
        "blocks_to_swap", when=_is("training", "gradient_checkpointing", "true")),
    ("training", "cpu_offload_checkpointing"): _lever(
        "cpu_offload_checkpointing", when=_is("training", "gradient_checkpointing", "true")),
    **{("model", key): _not_flux("model", key)
       for key in ("v_parameterization", "clip_skip", "vae", "no_half_vae")},
    # The clip-skip question (clip_skip itself stays in sight while it holds a value).
    (WIZARD, "model_style"): Condition(lambda draft: draft.flux_model() is None, keep=True),
}
FLUX_FIELDS: tuple[FieldKey, ...] = (("flux", "ae"), ("flux", "clip_l"), ("flux", "t5xxl"))
FLUX_ADVANCED: tuple[FieldKey, ...] = tuple(("flux", key) for key in (
    "model_type", "apply_t5_attn_mask", "t5xxl_max_token_length", "guidance_scale",
    "timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "model_prediction_type",
    "weighting_scheme", "logit_mean", "logit_std", "mode_scale"))

_BUCKETS = _is("dataset", "enable_bucket", "true")
_HUBER = _is("training", "loss_type", "huber", "smooth_l1")


def _model_family_unknown(draft: Draft) -> bool:
    # SD 2.x is told from the weights; ask only when they cannot tell (a .ckpt, a path that
    # does not load yet) or when the profile already says something.
    return draft.model_family() is None or draft.text("model", "v2") != ""


CONDITIONS: dict[FieldKey, Condition] = {
    # What the profile declares (conv_dim for LoCon & co., factor for LoKr...): the checks
    # refuse the same fields where they do not apply.
    **{key: Condition(_declared(when)) for key, when in FIELD_CONDITIONS.items()},
    ("model", "v2"): Condition(_model_family_unknown, keep=True),
    ("training", "gpu_ids"): Condition(lambda draft: draft.current(
        "training", "num_processes") not in ("", "1")),
    ("optimizer", "lr_scheduler_num_cycles"): Condition(
        _is("optimizer", "lr_scheduler", "cosine_with_restarts")),
    ("optimizer", "lr_scheduler_power"): Condition(
        _is("optimizer", "lr_scheduler", "polynomial")),
    ("dataset", "min_bucket_reso"): Condition(_BUCKETS),
    ("dataset", "max_bucket_reso"): Condition(_BUCKETS),
    ("dataset", "bucket_reso_steps"): Condition(_BUCKETS),
    ("dataset", "bucket_no_upscale"): Condition(_BUCKETS),
    ("saving", "tag_summary_order"): Condition(_is("saving", "tag_summary", "true")),
    ("saving", "save_state_every_n_minutes"): Condition(_is("saving", "save_state", "true")),
    ("saving", "save_last_n_states"): Condition(_is("saving", "save_state", "true")),
    ("saving", "save_state_on_train_end"): Condition(_is("saving", "save_state", "true")),
    ("training", "huber_schedule"): Condition(_HUBER),
    ("training", "huber_c"): Condition(_HUBER),
    ("training", "huber_scale"): Condition(_HUBER),
    ("training", "multires_noise_discount"): Condition(
        _set("training", "multires_noise_iterations")),
    ("training", "adaptive_noise_scale"): Condition(_set("training", "noise_offset")),
    ("training", "noise_offset_random_strength"): Condition(_set("training", "noise_offset")),
    **FLUX_CONDITIONS,
}


@dataclass(frozen=True)
class WizardQuestion:
    """A question that is not a profile field. ``kind`` as FieldSpec.kind, plus
    "multiline" (a text area)."""

    key: str
    kind: str
    default: str
    doc: str
    choices: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None  # shown for the choices, same order


MODEL_STYLES = ("realistic", "anime", "other")
WIZARD_QUESTIONS: dict[str, WizardQuestion] = {
    "model_style": WizardQuestion(
        "model_style", "choice", "realistic",
        "Realistic and base models read the text encoder's last layer (clip skip 1); anime "
        "models made from NovelAI's read the one before it (clip skip 2).",
        MODEL_STYLES,
        ("realistic or base model (clip skip 1)", "anime / NovelAI-based model (clip skip 2)",
         "other (clip skip set in the advanced options, Ctrl+O)")),
    "typed_prompts": WizardQuestion(
        "typed_prompts", "multiline", "",
        "Or type prompts here, one per line (options as in a prompt file: --n negative "
        "--w 512 --h 512 --s 30 --l 7.5 --d seed). Saved as <output_name>-prompts.txt "
        "next to the profile, and sample prompts then names that file. Enter on an empty "
        "box moves on."),
}

STEPS: tuple[Step, ...] = (
    Step("Base model",
         "The model the LoRA is trained for: a .safetensors/.ckpt checkpoint, a diffusers "
         "folder, a Flux.1 transformer, or builtin:tiny-sd1 (builtin:tiny-flux) to try things "
         "out. Its family is read from the weights.",
         (("model", "pretrained_model_name_or_path"), (WIZARD, "model_style"),
          ("model", "v2"), ("model", "v_parameterization"), *FLUX_FIELDS),
         (("model", "clip_skip"), ("model", "vae"), ("model", "no_half_vae"),
          ("model", "tokenizer_cache_dir"), *FLUX_ADVANCED),
         model_check=True),
    Step("Training images",
         "Pick the folder that CONTAINS the <repeats>_<name> image folders (for example "
         "dataset/train holding 10_mychar: 10 repeats; \"mychar\" is the trigger, the "
         "caption of pictures without one). Regularization images go in step 4.",
         (("dataset", "train_data_dir"),),
         (("dataset", "dataset_config"), ("dataset", "max_data_loader_n_workers")),
         dataset_check=True),
    Step("Output", "Where the LoRA files go and what they are called.",
         (("saving", "output_dir"), ("saving", "output_name")),
         (("saving", "save_model_as"),)),
    Step("Regularization images",
         "Optional: a parent folder of <repeats>_<class> folders of images of the class "
         "(\"a woman\") without your subject. Leave empty for none.",
         (("dataset", "reg_data_dir"),),
         (("dataset", "prior_loss_weight"),),
         dataset_check=True),
    Step("Optimizer", "How the weights are updated. AdamW8bit is the usual choice; Prodigy "
         "and DAdaptation find their own step size; ScheduleFree needs no schedule.",
         (("optimizer", "optimizer_type"), ("optimizer", "optimizer_args")),
         (("optimizer", "max_grad_norm"), ("optimizer", "scale_weight_norms"),
          ("optimizer", "fused_optimizer"))),
    Step("Network", "The adapter's type and size. Alpha / dim scales the updates.",
         (("network", "network_module"), ("network", "network_dim"),
          ("network", "network_alpha"), ("network", "conv_dim"), ("network", "conv_alpha")),
         (("network", "dora_wd"), ("network", "factor"), ("network", "dylora_unit"),
          ("network", "constraint"), ("network", "rescaled"), ("network", "train_on_input"),
          ("network", "network_dropout"), ("network", "rank_dropout"),
          ("network", "module_dropout"), ("network", "network_train_unet_only"),
          ("network", "network_train_text_encoder_only"), ("network", "network_weights"),
          ("network", "dim_from_weights"), ("network", "network_multiplier"),
          ("network", "base_weights"), ("network", "base_weights_multiplier"),
          ("network", "block_dims"), ("network", "block_alphas"),
          ("network", "conv_block_dims"), ("network", "conv_block_alphas"),
          ("network", "network_args"), *(("flux", key) for key in LORA_FLUX_ARGS))),
    Step("Learning rates", "The base rate, and separate rates for the U-Net and the text "
         "encoder (empty: the base rate).",
         (("optimizer", "learning_rate"), ("optimizer", "unet_lr"),
          ("optimizer", "text_encoder_lr")),
         (("optimizer", "loraplus_lr_ratio"), ("optimizer", "loraplus_unet_lr_ratio"),
          ("optimizer", "loraplus_text_encoder_lr_ratio"), ("optimizer", "down_lr_weight"),
          ("optimizer", "mid_lr_weight"), ("optimizer", "up_lr_weight"),
          ("optimizer", "block_lr_zero_threshold"))),
    Step("Scheduler", "How the learning rate changes over the run.",
         (("optimizer", "lr_scheduler"), ("optimizer", "lr_scheduler_num_cycles"),
          ("optimizer", "lr_scheduler_power"), ("optimizer", "lr_warmup_steps")),
         (("optimizer", "lr_decay_steps"), ("optimizer", "lr_scheduler_min_lr_ratio"),
          ("optimizer", "lr_scheduler_timescale"), ("optimizer", "lr_scheduler_type"),
          ("optimizer", "lr_scheduler_args"))),
    Step("Resolution and bucketing", "Images are resized to about this many pixels; with "
         "bucketing, each keeps its aspect ratio.",
         (("dataset", "resolution"), ("dataset", "enable_bucket"),
          ("dataset", "min_bucket_reso"), ("dataset", "max_bucket_reso")),
         (("dataset", "bucket_reso_steps"), ("dataset", "bucket_no_upscale"),
          ("dataset", "resize_interpolation"))),
    Step("Batch size", "Images per step: more is faster per epoch and needs more memory.",
         (("training", "train_batch_size"),),
         (("training", "gradient_accumulation_steps"),
          ("training", "gradient_checkpointing"), ("training", "fp8_base"),
          ("training", "fp8_base_unet"), ("training", "full_bf16"), ("training", "full_fp16"),
          ("training", "blocks_to_swap"),
          ("training", "cpu_offload_checkpointing"),
          ("training", "torch_compile"), ("training", "dynamo_backend"),
          ("training", "num_processes"),
          ("training", "gpu_ids"))),
    Step("Epochs or steps", "How long training runs: epochs (each image x its repeats once) "
         "or a number of steps. The review shows the exact totals.",
         (("training", "max_train_epochs"), ("training", "max_train_steps")),
         (("training", "seed"), ("training", "validation_split"), ("training", "validation_seed"),
          ("training", "validate_every_n_epochs"), ("training", "validate_every_n_steps"),
          ("training", "max_validation_steps"), ("training", "early_stopping_patience"))),
    Step("Saving", "Numbered files along the way, the precision of the saved file, and a note "
         "stored inside it. A resumable training state goes with every numbered file (and "
         "every 30 minutes), so a stopped or crashed run continues where it was. Ctrl+O: "
         "TensorBoard curves too.",
         (("saving", "save_every_n_epochs"), ("saving", "save_precision"),
          ("saving", "training_comment")),
         (("saving", "save_every_n_steps"), ("saving", "save_n_epoch_ratio"),
          ("saving", "save_last_n_epochs"), ("saving", "save_last_n_steps"),
          ("saving", "save_last_n_epochs_state"), ("saving", "save_last_n_steps_state"),
          ("saving", "save_state"),
          ("saving", "save_state_every_n_minutes"), ("saving", "save_last_n_states"),
          ("saving", "save_state_on_train_end"), ("saving", "metadata_title"),
          ("saving", "metadata_author"), ("saving", "metadata_description"),
          ("saving", "metadata_license"), ("saving", "metadata_tags"),
          ("saving", "no_metadata"),
          ("logging", "log_with"),
          ("logging", "logging_dir"), ("logging", "log_prefix"),
          ("logging", "log_tracker_name"), ("notify", "command"), ("notify", "webhook"),
          ("notify", "on"))),
    Step("Captions", "How captions are read and varied.",
         (("dataset", "shuffle_caption"), ("dataset", "keep_tokens"),
          ("dataset", "caption_extension"), ("saving", "tag_summary"),
          ("saving", "tag_summary_order")),
         (("dataset", "keep_tokens_separator"), ("dataset", "caption_separator"),
          ("dataset", "secondary_separator"), ("dataset", "caption_prefix"),
          ("dataset", "caption_suffix"), ("dataset", "caption_dropout_rate"),
          ("dataset", "caption_dropout_every_n_epochs"),
          ("dataset", "caption_tag_dropout_rate"), ("dataset", "enable_wildcard"),
          ("dataset", "token_warmup_min"), ("dataset", "token_warmup_step"),
          ("dataset", "max_token_length"), ("dataset", "weighted_captions"))),
    Step("Augmentation and caching", "Random changes to the images, and encoding them once "
         "ahead of time (caching cannot be combined with color_aug or random_crop).",
         (("dataset", "flip_aug"), ("dataset", "color_aug"), ("dataset", "random_crop"),
          ("dataset", "cache_latents"), ("dataset", "cache_latents_to_disk")),
         (("dataset", "vae_batch_size"), ("dataset", "cache_text_encoder_outputs"),
          ("dataset", "cache_text_encoder_outputs_to_disk"), ("dataset", "alpha_mask"),
          ("training", "masked_loss"))),
    Step("Mixed precision", "The number format of the computation.",
         (("training", "mixed_precision"),)),
    Step("Min-SNR and noise offset", "Loss weighting and noise tweaks; both are off unless "
         "set (min-SNR 5 and noise offset 0.05-0.1 are usual).",
         (("training", "min_snr_gamma"), ("training", "noise_offset"),
          ("training", "adaptive_noise_scale"), ("training", "noise_offset_random_strength")),
         (("training", "multires_noise_iterations"), ("training", "multires_noise_discount"),
          ("training", "scale_v_pred_loss_like_noise_pred"),
          ("training", "debiased_estimation_loss"), ("training", "zero_terminal_snr"),
          ("training", "min_timestep"), ("training", "max_timestep"), ("training", "loss_type"),
          ("training", "huber_schedule"), ("training", "huber_c"), ("training", "huber_scale"),
          ("training", "ip_noise_gamma"), ("training", "ip_noise_gamma_random_strength"),
          ("training", "v_pred_like_loss"))),
    Step("Sample prompts", "Preview images during training: a prompt file, or prompts typed "
         "here, and how often.",
         (("sample", "sample_prompts"), (WIZARD, "typed_prompts"),
          ("sample", "sample_every_n_epochs"), ("sample", "sample_every_n_steps"),
          ("sample", "sample_sampler")),
         (("sample", "sample_at_first"),)),
)


def _also_not_for_flux(condition: Condition | None, section: str, key: str) -> Condition:
    """``condition`` (or none), and hidden for a Flux model unless the field holds a value
    (``_not_flux``): an SD option that means nothing for Flux (``MEANINGLESS_FOR_FLUX``)."""
    sd_only = _not_flux(section, key)
    if condition is None:
        return sd_only
    return Condition(lambda draft: condition.applies(draft) and sd_only.applies(draft),
                     condition.keep)


# SD options that mean nothing for Flux are not shown for a Flux model on the model step and
# among the advanced options (the check refuses them, by field, when they are set). A
# step's main fields stay: step 16's are all SD's, and a step shows at least one field.
for _key in MEANINGLESS_FOR_FLUX:
    if any(_key in step.advanced for step in STEPS) and _key not in FLUX_CONDITIONS:
        CONDITIONS[_key] = _also_not_for_flux(CONDITIONS.get(_key), *_key)


def applies(draft: Draft, section: str, key: str) -> bool:
    """Whether ``[section] key`` means something with the draft's other answers."""
    condition = CONDITIONS.get((section, key))
    return condition is None or condition.applies(draft)


def dropped_when_hidden(section: str, key: str) -> bool:
    condition = CONDITIONS.get((section, key))
    return condition is not None and not condition.keep


def unreachable_fields() -> list[FieldKey]:
    """Profile fields that no step asks, even with its advanced options shown."""
    asked = {key for step in STEPS for key in (*step.fields, *step.advanced)}
    return [(section, f.name) for section, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if (section, f.name) not in asked]
