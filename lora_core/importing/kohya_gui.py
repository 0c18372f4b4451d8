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
- ``sample_prompts`` is the prompts' text, which the GUI writes into a file itself.
"""

from __future__ import annotations

from typing import Any

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
              "lycoris/glora": "GLoRA", "lycoris/native fine-tuning": "Full"}
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
                 "noise_offset", "adaptive_noise_scale", "multires_noise_iterations"}
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
                        "Native Fine-Tuning")


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
    for key, value in data.items():
        if key in ("LoRA_type", "additional_parameters", "unet_lr", "text_encoder_lr",
                   "epoch", "max_train_epochs", "max_train_steps", "lr_warmup",
                   "lr_warmup_steps"):
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
            elif key == "sdxl_no_half_vae":
                options.append(("no_half_vae", True))
            elif key == "sdxl_cache_text_encoder_outputs":
                options.append(("cache_text_encoder_outputs", True))
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
