"""A kohya_ss GUI JSON (a saved LoRA configuration or one of its presets), read as the GUI
reads it when it builds sd-scripts' command (bmaltais/kohya_ss, ``kohya_gui/lora_gui.py``).

The GUI's fields are not all sd-scripts options, and several mean something else there:
- ``LoRA_type`` picks the network module and which of the network fields it passes at all
  (``train_on_input`` only for iA3, ``unit`` only for DyLoRA, ...); the others mean nothing;
- ``noise_offset_type`` "Original" passes ``noise_offset`` (and its adaptive scale and random
  strength) and "Multires" passes ``multires_noise_*``: the other kind's values are leftovers;
- 0 or "" means "off" (seed 0: random; save/sample every 0: never; min SNR 0: off ...);
  ``unet_lr`` / ``text_encoder_lr`` 0 mean "use learning_rate", and one of them 0 with the
  other set trains only the other side (the GUI adds ``network_train_unet_only`` /
  ``network_train_text_encoder_only``);
- ``epoch`` is the epoch count the GUI turns into ``max_train_steps`` when neither
  ``max_train_epochs`` nor ``max_train_steps`` is set; an empty ``lr_scheduler_num_cycles``
  is ``epoch``;
- ``optimizer_args`` / ``lr_scheduler_args`` are one text whose quotes the GUI removes;
- ``sample_prompts`` is the prompts' text, which the GUI writes into a file itself;
- the Flux.1 fields are saved in every configuration and passed only with
  ``flux1_checkbox`` on (``_flux``).
"""

from __future__ import annotations

from typing import Any

from lora_core.checks.fields import owner_section
from lora_core.errors import LoraError
from lora_core.importing.command_line import read_command_line
from lora_core.importing.mapping import (
    ACCELERATE,
    MAPPED,
    NO_EFFECT,
    NOT_SUPPORTED,
    OFF,
    Mapped,
)

Options = list[tuple[str, Any]]

# LoRA_type -> this project's network type.
LORA_TYPES = {"standard": "LoRA", "kohya locon": "LoCon", "locon": "LoCon",
              "lycoris/locon": "LoCon", "lycoris/loha": "LoHa", "lycoris/lokr": "LoKr",
              "kohya loha": "LoHa", "kohya lokr": "LoKr", "lycoris/ia3": "IA3",
              "lycoris/dylora": "DyLoRA", "kohya dylora": "DyLoRA",
              "lycoris/diag-oft": "DiagOFT", "lycoris/boft": "BOFT",
              "lycoris/glora": "GLoRA", "lycoris/native fine-tuning": "Full",
              "flux1": "LoRA"}  # networks.lora_flux: LoRA on a Flux model
_BLOCKS = {"down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
           "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"}
_LYCORIS = {"conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout",
            "rank_dropout_scale", "train_norm", "LyCORIS_preset"}
# The network fields the GUI passes for each LoRA_type (lora_gui.py's network_args).
TYPE_FIELDS = {
    "standard": _BLOCKS | {"rank_dropout", "module_dropout"},
    "kohya locon": _BLOCKS | {"rank_dropout", "module_dropout", "conv_dim", "conv_alpha"},
    "kohya dylora": _BLOCKS | {"rank_dropout", "module_dropout", "conv_dim", "conv_alpha",
                               "unit"},
    "lycoris/locon": _LYCORIS | {"bypass_mode", "dora_wd", "use_scalar"},
    "locon": _LYCORIS | {"bypass_mode", "dora_wd", "use_scalar"},
    "lycoris/loha": _LYCORIS | {"bypass_mode", "dora_wd", "use_scalar"},
    "lycoris/lokr": _LYCORIS | {"bypass_mode", "dora_wd", "use_scalar", "factor", "use_cp",
                                "decompose_both"},
    "kohya loha": {"conv_dim", "conv_alpha", "rank_dropout", "module_dropout"},
    "kohya lokr": {"conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "factor"},
    "lycoris/ia3": {"conv_dim", "conv_alpha", "train_on_input", "LyCORIS_preset"},
    "lycoris/dylora": _LYCORIS | {"unit"},
    "lycoris/glora": set(_LYCORIS),
    "lycoris/diag-oft": _LYCORIS | {"constrain", "rescaled"},
    "lycoris/boft": set(_LYCORIS),
    "lycoris/native fine-tuning": {"rank_dropout", "module_dropout", "rank_dropout_scale",
                                   "train_norm", "LyCORIS_preset"},
    "flux1": {"rank_dropout", "module_dropout"},
}
NETWORK_FIELDS = set().union(*TYPE_FIELDS.values())
# GUI names of fields that have another name here.
RENAMED = {"unit": "dylora_unit", "constrain": "constraint",
           "lora_network_weights": "network_weights"}
# LyCORIS knobs of the GUI with no field here: fine when off (False, 0, "full" preset).
LYCORIS_ONLY = {"use_tucker": False, "use_scalar": False, "bypass_mode": False,
                "rank_dropout_scale": False, "train_norm": False, "use_cp": False,
                "decompose_both": False, "LyCORIS_preset": "full"}
# Fields whose 0 the GUI passes as "not set" (lora_gui.py: `x if x != 0 else None`).
ZERO_IS_UNSET = {"seed", "save_every_n_epochs", "save_every_n_steps", "save_last_n_steps",
                 "save_last_n_steps_state", "save_last_n_epochs", "save_last_n_epochs_state",
                 "sample_every_n_epochs", "sample_every_n_steps", "ip_noise_gamma",
                 "max_timestep", "min_timestep", "min_snr_gamma", "v_pred_like_loss",
                 "vae_batch_size", "clip_skip", "stop_text_encoder_training",
                 "scale_weight_norms", "network_dropout", "rank_dropout", "module_dropout",
                 "noise_offset", "adaptive_noise_scale", "multires_noise_iterations",
                 # network_args the GUI adds only when set (append_loraplus_network_args)
                 "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                 "loraplus_text_encoder_lr_ratio"}
# GUI fields that are not sd-scripts options: (status, why) when switched on.
GUI_OWN = {
    "xformers": (NO_EFFECT, "scaled-dot-product attention is always used"),
    "sdxl": (NO_EFFECT, "the model family (SDXL) is read from the model file"),
    "stop_text_encoder_training": (NOT_SUPPORTED, "stopping text-encoder training part way "
                                   "is not supported"),
    "num_cpu_threads_per_process": (NO_EFFECT, ACCELERATE["num_cpu_threads_per_process"]),
    "multi_gpu": (NO_EFFECT, ACCELERATE["multi_gpu"]),
    "num_machines": (NO_EFFECT, ACCELERATE["num_machines"]),
    "main_process_port": (NO_EFFECT, ACCELERATE["main_process_port"]),
    "dynamo_backend": (NO_EFFECT, ACCELERATE["dynamo_backend"]),
    "extra_accelerate_launch_args": (NO_EFFECT, "accelerate's own options"),
    "save_as_bool": (NO_EFFECT, "a kohya_ss GUI setting"),
    "model_list": (NO_EFFECT, "a kohya_ss GUI setting (the model is given by its path)"),
    "noise_offset_type": (NO_EFFECT, "read: it says which noise settings kohya_ss passes"),
    "conv_dims": (NOT_SUPPORTED, "per-block convolution dims in kohya_ss' form: use "
                  "conv_block_dims"),
    "conv_alphas": (NOT_SUPPORTED, "per-block convolution alphas in kohya_ss' form: use "
                    "conv_block_alphas"),
    "sdxl_cache_text_encoder_outputs": (MAPPED, ""), "sdxl_no_half_vae": (MAPPED, ""),
}
# Flux.1 fields of the GUI (kohya_gui/class_flux1.py), which lora_gui.py passes only with
# flux1_checkbox on (it then runs flux_train_network.py): with it off they are leftovers.
FLUX_PASSED = ("ae", "clip_l", "t5xxl", "discrete_flow_shift", "model_prediction_type",
               "timestep_sampling", "guidance_scale", "t5xxl_max_token_length",
               "apply_t5_attn_mask", "cpu_offload_checkpointing", "blocks_to_swap")
# networks.lora_flux's network_args the GUI passes for LoRA_type "Flux1" when set.
FLUX_NETWORK_ARGS = ("img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim",
                     "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "single_mod_dim", "in_dims",
                     "train_double_block_indices", "train_single_block_indices", "split_qkv",
                     "train_t5xxl")
FLUX_OWN = {  # the GUI's other Flux fields: what becomes of them (with flux1_checkbox on)
    "fp8_base_unet": "",  # passed as it is
    "mem_eff_save": "flux_train.py's (full fine-tuning) option: flux_train_network.py, which "
                    "trains a LoRA, does not read it",
    "single_blocks_to_swap": "deprecated in sd-scripts and no option of flux_train_network.py "
                             "any more: blocks_to_swap is the block swap",
    "double_blocks_to_swap": "deprecated in sd-scripts and no option of flux_train_network.py "
                             "any more: blocks_to_swap is the block swap",
    "enable_all_linear": "kohya_ss passes it only for LoRA_type \"Flux1 OFT\"",
    "train_lora_ggpo": "kohya_ss' switch for ggpo_sigma / ggpo_beta",
    "ggpo_sigma": "networks.lora_flux's GGPO, which lora-train does not support",
    "ggpo_beta": "networks.lora_flux's GGPO, which lora-train does not support",
    "t5xxl_lr": "a learning rate of its own for T5-XXL, which lora-train does not support: "
                "T5 (with train_t5xxl) learns at text_encoder_lr",
}
FLUX_KEYS = frozenset({"flux1_checkbox", "model_type", "split_mode", "train_blocks",
                       "flux1_cache_text_encoder_outputs",
                       "flux1_cache_text_encoder_outputs_to_disk", *FLUX_PASSED,
                       *FLUX_NETWORK_ARGS, *FLUX_OWN})
_ORIGINAL = ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength")
_MULTIRES = ("multires_noise_iterations", "multires_noise_discount")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _is_off(value: Any) -> bool:
    if value is None or value is False or value == "":
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("none", "no", "0", "0.0")
    return isinstance(value, (int, float)) and value == 0


def check_kind(data: dict) -> None:
    """LoraError for a kohya_ss configuration of another trainer (DreamBooth, fine-tuning,
    textual inversion: no LoRA fields) or of a LoRA type lora-train does not train."""
    if "LoRA_type" not in data and "network_dim" not in data:
        what = ("textual inversion (an embedding)" if {"token_string", "init_word",
                                                       "num_vectors_per_token"} & set(data)
                else "DreamBooth or fine-tuning (a full model)")
        raise LoraError(f"this kohya_ss configuration has no LoRA settings (no LoRA_type, no "
                        f"network_dim): it is one for {what}",
                        "lora-train imports kohya_ss LoRA configurations (saved from its LoRA "
                        "tab)")
    lora_type = str(data.get("LoRA_type", "Standard"))
    if lora_type.lower() not in LORA_TYPES:
        raise LoraError(f"this kohya_ss configuration trains LoRA_type {lora_type!r}, "
                        "which lora-train does not train",
                        "the types it trains: Standard, Kohya LoCon, Kohya DyLoRA, "
                        "LyCORIS/LoCon, LoHa, LoKr, iA3, DyLoRA, Diag-OFT, BOFT, GLoRA, "
                        "Native Fine-Tuning, Flux1")


def read_kohya_gui_json(data: dict, mapped: Mapped) -> Options:
    check_kind(data)
    lora_type = str(data.get("LoRA_type", "Standard"))
    kind = lora_type.lower()
    module = LORA_TYPES[kind]
    options: Options = []
    mapped.set("network", "network_module", module, "LoRA_type", f"read as \"{module}\"")
    mapped.lines[-1].value = lora_type
    leftovers = _MULTIRES if data.get("noise_offset_type", "Original") == "Original" \
        else _ORIGINAL
    options += _learning_rates(data, mapped)
    options += _length(data, mapped)
    options += _warmup(data, mapped)
    options += _flux(data, mapped, kind)
    for key, value in data.items():
        if key in ("LoRA_type", "additional_parameters", "unet_lr", "text_encoder_lr",
                   "epoch", "max_train_epochs", "max_train_steps", "lr_warmup",
                   "lr_warmup_steps") or key in FLUX_KEYS:
            continue
        off = _is_off(value)
        if key in leftovers:
            if off:
                mapped.note(key, OFF, "off in the source", value)
            else:
                mapped.note(key, NO_EFFECT, "a leftover: kohya_ss passes it only with "
                            f"noise_offset_type \"{'Multires' if key in _MULTIRES else 'Original'}"
                            f"\" (this file says \"{data.get('noise_offset_type', 'Original')}"
                            "\")", value)
            continue
        if key in NETWORK_FIELDS and key not in TYPE_FIELDS[kind]:
            if off:
                mapped.note(key, OFF, "off in the source", value)
            else:
                mapped.note(key, NO_EFFECT, f"kohya_ss passes it only for other LoRA types "
                            f"than {lora_type}", value)
            continue
        if key in LYCORIS_ONLY:
            if off or value == LYCORIS_ONLY[key]:
                mapped.note(key, OFF, "off in the source (LyCORIS' default)", value)
            else:
                mapped.note(key, NOT_SUPPORTED, "a LyCORIS setting lora-train has no "
                            "equivalent for; the run goes without it", value)
            continue
        if key in GUI_OWN:
            if off:
                mapped.note(key, OFF, "off in the source", value)
            elif key.startswith("sdxl_") and _is_off(data.get("sdxl")):
                mapped.note(key, NO_EFFECT, "a leftover: kohya_ss passes it only with sdxl "
                            "on", value)
            elif key == "sdxl_no_half_vae":
                mapped.set("model", "no_half_vae", True, key, "sd-scripts' no_half_vae")
            elif key == "sdxl_cache_text_encoder_outputs":
                mapped.set("dataset", "cache_text_encoder_outputs", True, key,
                           "sd-scripts' cache_text_encoder_outputs")
            else:
                status, why = GUI_OWN[key]
                mapped.note(key, status, why, value)
            continue
        if key == "use_wandb":  # older kohya_ss: the switch for --log_with wandb
            other = str(data.get("log_with") or "")
            if off:
                mapped.note(key, OFF, "off in the source", value)
            else:
                mapped.set("logging", "log_with", "wandb" if other in ("", "wandb") else
                           "all", key, "kohya_ss logs to Weights & Biases with it")
            continue
        if key == "log_with" and not off and data.get("use_wandb") \
                and value != "wandb":
            continue  # "all", set with use_wandb above
        if key in ZERO_IS_UNSET and off:
            mapped.note(key, OFF, "0 or empty: off in kohya_ss", value)
            continue
        if key in ("optimizer_args", "lr_scheduler_args") and isinstance(value, str):
            value = value.replace('"', "").split()  # as the GUI passes them
            if not value:
                mapped.note(key, OFF, "empty in the source", data[key])
                continue
        if key == "lr_scheduler_num_cycles" and value in ("", None) and \
                _number(data.get("epoch")) > 0:
            mapped.set("optimizer", "lr_scheduler_num_cycles", int(_number(data["epoch"])),
                       key, "empty: kohya_ss passes epoch")
            continue
        if key == "sample_prompts" and value and ("\n" in str(value) or not str(
                value).lower().endswith((".txt", ".toml", ".json"))):
            mapped.note(key, NOT_SUPPORTED, "kohya_ss holds the prompts' text and writes it "
                        "into a file itself: save them as a .txt and set [sample] "
                        "sample_prompts to it", value)
            continue
        options.append((RENAMED.get(key, key), value))
    extra = str(data.get("additional_parameters") or "").strip()
    if extra:
        options += read_command_line(extra, mapped)
    elif "additional_parameters" in data:
        mapped.note("additional_parameters", OFF, "empty in the source",
                    data["additional_parameters"])
    return options


def _learning_rates(data: dict, mapped: Mapped) -> Options:
    """unet_lr / text_encoder_lr as the GUI passes them: 0 or "" is "use learning_rate";
    one of them 0 with the other set trains only the other side."""
    unet, te = _number(data.get("unet_lr")), _number(data.get("text_encoder_lr"))
    options: Options = []
    for key, rate in (("unet_lr", unet), ("text_encoder_lr", te)):
        if key not in data:
            continue
        if rate:
            options.append((key, data[key]))
        elif unet or te:
            side = "the U-Net" if key == "text_encoder_lr" else "the text encoder"
            flag = "network_train_unet_only" if key == "text_encoder_lr" else \
                "network_train_text_encoder_only"
            mapped.set("network", flag, True, key, f"{flag} = true: 0 in kohya_ss with the "
                       f"other rate set means it trains {side} only")
            mapped.lines[-1].value = data[key]  # the source's value, not the flag's
        else:
            mapped.note(key, OFF, "0 or empty in kohya_ss: learning_rate is used",
                        data[key])
    return options


def _warmup(data: dict, mapped: Mapped) -> Options:
    """``lr_warmup`` (a percentage of all steps) and ``lr_warmup_steps`` (an absolute
    override: 0 or "" means "use the percentage"), as kohya_ss'
    ``common_gui.resolve_lr_warmup_steps`` resolves them: the override when it is above 0,
    else the percentage as a fraction (sd-scripts reads a value below 1 as a ratio)."""
    percent, steps = _number(data.get("lr_warmup")), _number(data.get("lr_warmup_steps"))
    if steps > 0:
        if "lr_warmup" in data:
            if percent:
                mapped.note("lr_warmup", NO_EFFECT, "lr_warmup_steps is set: kohya_ss uses "
                            "it over the percentage", data["lr_warmup"])
            else:
                mapped.note("lr_warmup", OFF, "0 or empty in the source", data["lr_warmup"])
        mapped.set("optimizer", "lr_warmup_steps", int(steps), "lr_warmup_steps")
        mapped.lines[-1].value = data["lr_warmup_steps"]
        return []
    if "lr_warmup_steps" in data:
        mapped.note("lr_warmup_steps", OFF, "0 or empty: kohya_ss uses lr_warmup (the "
                    "percentage) instead", data["lr_warmup_steps"])
    if percent:
        mapped.set("optimizer", "lr_warmup_steps", percent / 100, "lr_warmup",
                   f"{data['lr_warmup']}% of all steps, as sd-scripts' ratio")
        mapped.lines[-1].value = data["lr_warmup"]
    elif "lr_warmup" in data:
        mapped.note("lr_warmup", OFF, "0 or empty: no warmup", data["lr_warmup"])
    return []


def _length(data: dict, mapped: Mapped) -> Options:
    """max_train_epochs, else max_train_steps, else epoch (the GUI computes the steps of that
    many epochs); 0 or "" is "not set"."""
    chosen = next((key for key in ("max_train_epochs", "max_train_steps", "epoch")
                   if _number(data.get(key)) > 0), None)
    for key in ("max_train_epochs", "max_train_steps", "epoch"):
        if key not in data or key == chosen:
            continue
        if _number(data[key]) > 0:
            mapped.note(key, NO_EFFECT, f"{chosen} is set, and it decides the length",
                        data[key])
        else:
            mapped.note(key, OFF, "0 or empty: not set in kohya_ss", data[key])
    if chosen is None:
        return []
    if chosen == "epoch":
        mapped.set("training", "max_train_epochs", int(_number(data["epoch"])), "epoch",
                   "kohya_ss trains this many epochs (it passes their steps)")
        return []
    return [(chosen, data[chosen])]


def _flux(data: dict, mapped: Mapped, kind: str) -> Options:
    """The Flux.1 fields, as lora_gui.py passes them: only with ``flux1_checkbox`` on, each
    only when set (its config filter drops "", False, None and 0); ``clip_l`` not for
    Chroma; ``model_type`` only as "chroma"; the cache switches as
    ``cache_text_encoder_outputs(_to_disk)``; the networks.lora_flux args only for LoRA_type
    "Flux1", ``split_mode`` as ``train_blocks=single`` there (``train_blocks`` is passed
    only so); sd-scripts reads ``split_mode`` as ``blocks_to_swap`` 18 when that is unset."""
    flux = not _is_off(data.get("flux1_checkbox"))
    chroma = flux and str(data.get("model_type") or "").lower() == "chroma"
    options: Options = []
    for key in (k for k in data if k in FLUX_KEYS):
        value = data[key]
        off = _is_off(value) and not (chroma and key == "guidance_scale")
        if key == "flux1_checkbox":
            mapped.note(key, OFF if off else NO_EFFECT, "the model family (Flux.1) is read "
                        "from the model file", value)
        elif off:
            mapped.note(key, OFF, "off or empty in the source", value)
        elif not flux:
            mapped.note(key, NO_EFFECT, "a leftover: kohya_ss passes it only with "
                        "flux1_checkbox (Flux.1) on", value)
        elif key in FLUX_NETWORK_ARGS and kind != "flux1":
            mapped.note(key, NO_EFFECT, "kohya_ss passes it only for LoRA_type \"Flux1\"",
                        value)
        elif key == "model_type":
            if chroma:
                options.append((key, "chroma"))
            else:
                mapped.note(key, NO_EFFECT, "kohya_ss passes model_type only for chroma; "
                            "dev or schnell is read from the model file", value)
        elif key == "clip_l" and chroma:
            mapped.note(key, NO_EFFECT, "kohya_ss passes no clip_l for Chroma (it has no "
                        "CLIP-L)", value)
        elif key == "train_blocks":
            mapped.note(key, NO_EFFECT, "kohya_ss passes train_blocks only with split_mode "
                        "(as single)" if value != "all" else "all: sd-scripts' default", value)
        elif key == "split_mode":
            if kind == "flux1":
                _network_arg(mapped, "train_blocks=single", key, value)
            if _is_off(data.get("blocks_to_swap")):
                mapped.set("training", "blocks_to_swap", 18, key, "sd-scripts reads the "
                           "deprecated split_mode as blocks_to_swap 18" + (
                               " (and kohya_ss passes train_blocks=single)"
                               if kind == "flux1" else ""))
                mapped.lines[-1].value = value
            else:
                mapped.note(key, NO_EFFECT, "deprecated: sd-scripts ignores it when "
                            "blocks_to_swap is set", value)
        elif key in ("flux1_cache_text_encoder_outputs",
                     "flux1_cache_text_encoder_outputs_to_disk"):
            mapped.set(owner_section(key.removeprefix("flux1_")) or "dataset",
                       key.removeprefix("flux1_"), True, key,
                       f"sd-scripts' {key.removeprefix('flux1_')}")
        elif key in FLUX_NETWORK_ARGS:
            _network_arg(mapped, f"{key}={value}", key, value)
        elif key in FLUX_OWN and FLUX_OWN[key]:
            status = NO_EFFECT if key in ("mem_eff_save", "enable_all_linear",
                                          "train_lora_ggpo") else NOT_SUPPORTED
            mapped.note(key, status, FLUX_OWN[key], value)
        else:
            options.append((key, value))
    return options


def _network_arg(mapped: Mapped, arg: str, key: str, value: Any) -> None:
    """One networks.lora_flux network_arg, added to the network_args so far (read into
    [flux] with the profile)."""
    mapped.set("network", "network_args", mapped.data.get("network", {}).get(
        "network_args", []) + [arg], key, f"network_args {arg}: networks.lora_flux's")
    mapped.lines[-1].value = value
