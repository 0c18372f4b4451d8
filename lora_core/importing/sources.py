"""The forms settings come in, each read into sd-scripts' option names.

- an ``accelerate launch train_network.py ...`` (or ``python train_network.py``) command line:
  POSIX quoting and ``\\`` continuations, Windows ``^`` continuations and ``D:\\`` paths,
  ``--key=value`` and ``--key value``, several values after ``--network_args`` /
  ``--optimizer_args``, accelerate's own options before the script;
- sd-scripts' ``--config_file`` TOML (tables of any name, flattened as sd-scripts does);
- a LoRA Easy Training Scripts TOML (``[general_args.args]``, ``[network_args.args]``, ...,
  ``[[subsets]]``) and a LETS popup-era JSON (``base_model``, ``img_folder``, ``net_dim``...);
- a kohya_ss GUI JSON (``LoRA_type``, ``epoch``, ``max_resolution``, ``lr_warmup`` in percent,
  numbers written as text, ``additional_parameters`` as a command line).

Each reader returns the options in order plus the lines it accounts for itself.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from lora_core.errors import LoraError
from lora_core.importing.mapping import (
    ACCELERATE,
    MAPPED,
    NO_EFFECT,
    NOT_SUPPORTED,
    OFF,
    Line,
    Mapped,
)

LORA_SCRIPTS = ("train_network.py", "sdxl_train_network.py")
OTHER_SCRIPTS = {"train_db.py": "DreamBooth (a full model)",
                 "sdxl_train.py": "SDXL fine-tuning (a full model)",
                 "fine_tune.py": "fine-tuning (a full model)",
                 "train_textual_inversion.py": "textual inversion (an embedding)",
                 "sdxl_train_textual_inversion.py": "textual inversion (an embedding)",
                 "flux_train_network.py": "FLUX LoRAs", "sd3_train_network.py": "SD3 LoRAs",
                 "lumina_train_network.py": "Lumina LoRAs", "flux_train.py": "FLUX fine-tuning",
                 "sd3_train.py": "SD3 fine-tuning", "train_controlnet.py": "ControlNet"}
Options = list[tuple[str, Any]]


# --- command lines ---------------------------------------------------------------------------


def join_lines(text: str) -> tuple[str, bool]:
    """The command as one line (``\\`` and ``^`` continuations joined, comments and blank
    lines dropped) and whether it is written for Windows (``^`` or drive-letter paths)."""
    windows = bool(re.search(r"\^\s*$", text, re.M)) or bool(re.search(r"[A-Za-z]:\\", text))
    parts = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "REM ", "rem ", "::")):
            continue
        if stripped.endswith(("\\", "^", "`")) and not stripped.endswith(":\\"):
            stripped = stripped[:-1].rstrip()
        parts.append(stripped)
    return " ".join(parts), windows


def split_words(line: str, windows: bool) -> list[str]:
    """Words as the shell would give them: POSIX rules, or cmd's (double quotes only,
    backslashes kept) for a Windows command."""
    try:
        if not windows:
            return shlex.split(line, comments=True)
        words = shlex.split(line, posix=False)
    except ValueError as exc:  # an unbalanced quote
        raise LoraError(f"the command cannot be split into words ({exc})",
                        "check its quotes: each \" or ' needs its closing one") from None
    return [w[1:-1] if len(w) >= 2 and w[0] == w[-1] and w[0] in "\"'" else
            w.replace('"', "") for w in words]


def read_command_line(text: str, mapped: Mapped) -> Options:
    """The script's options (accelerate's are accounted for in ``mapped``); LoraError for a
    command that runs another script or none."""
    line, windows = join_lines(text)
    # A command pasted into one line keeps its continuation marks between the words.
    line = re.sub(r"(?<=\s)[\\^`](?=\s)", " ", line)
    words = split_words(line, windows)
    script_at = next((i for i, w in enumerate(words) if w.replace("\\", "/").rsplit(
        "/", 1)[-1].lower().endswith(".py")), None)
    if script_at is None:
        if any(w.startswith("--") for w in words):  # bare options (kohya_ss' extra field)
            return parse_options(words)
        raise LoraError("this command runs no sd-scripts training script",
                        "give a command with train_network.py or sdxl_train_network.py")
    script = words[script_at].replace("\\", "/").rsplit("/", 1)[-1]
    if script not in LORA_SCRIPTS:
        what = OTHER_SCRIPTS.get(script, "something other than a LoRA")
        raise LoraError(f"this is a command for {script}, which trains {what}",
                        "lora-train imports LoRA training commands: train_network.py or "
                        "sdxl_train_network.py")
    if script.startswith("sdxl"):
        mapped.note("sdxl_train_network.py", NO_EFFECT, "the model family (SDXL) is read "
                    "from the model file")
    launcher = parse_options(words[:script_at])
    options = parse_options(words[script_at + 1:])
    given = {name for name, _ in options}
    for name, value in launcher:
        name = name.replace("-", "_")
        if name == "mixed_precision":
            if "mixed_precision" in given:
                mapped.note("accelerate --mixed_precision", NO_EFFECT,
                            "the script's own --mixed_precision is used", value)
            else:
                options.insert(0, ("mixed_precision", value))
        elif name in ("num_processes", "gpu_ids"):
            # lora-train launches the processes itself ([training] num_processes / gpu_ids).
            options.insert(0, (name, value))
        elif name in ACCELERATE:
            mapped.note(f"accelerate --{name}", NO_EFFECT, ACCELERATE[name] or
                        "accelerate's option", value)
        else:
            mapped.note(f"accelerate --{name}", NO_EFFECT, "an option of accelerate itself",
                        value)
    return options


_MANY = ("network_args", "optimizer_args", "lr_scheduler_args", "base_weights",
         "base_weights_multiplier", "block_lr", "network_module_args")


def parse_options(words: list[str]) -> Options:
    """``--key=value``, ``--key value``, ``--flag`` (True) and several values after the
    list-valued options; words that are no option's value are ignored (``launch``)."""
    options: Options = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            continue
        name, eq, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if eq:
            options.append((name, value))
            continue
        values = []
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
            if name not in _MANY:
                break
        if name in _MANY:
            options.append((name, values))
        else:
            options.append((name, values[0] if values else True))
    return options


# --- TOML and JSON forms ---------------------------------------------------------------------


def flatten(table: dict) -> Options:
    """sd-scripts' --config_file: the tables' names mean nothing, their keys are options."""
    options: Options = []
    for key, value in table.items():
        if isinstance(value, dict):
            options += flatten(value)
        else:
            options.append((key, value))
    return options


_LETS_SUBSET = {"image_dir", "num_repeats", "is_reg", "name", "caption_extension",
                "keep_tokens", "shuffle_caption", "flip_aug", "color_aug", "random_crop",
                "keep_tokens_separator", "caption_prefix", "caption_suffix"}


def read_lets_toml(data: dict, mapped: Mapped) -> tuple[Options, list[dict]]:
    """A LETS TOML: the ``args`` / ``dataset_args`` tables of each group are options; the
    nested ``network_args`` / ``optimizer_args`` / ``lr_scheduler_args`` tables are lists;
    ``[[subsets]]`` are returned for the dataset."""
    options: Options = []
    for group, tables in data.items():
        if group in ("subsets", "train_mode") or not isinstance(tables, dict):
            continue
        for kind in ("args", "dataset_args"):
            # a nested table (network_args = {conv_dim = 4, ...}) is the option's list
            options += list((tables.get(kind) or {}).items())
    mode = (data.get("train_mode") or {}).get("train_mode", "lora")
    if str(mode).lower() not in ("lora", ""):
        raise LoraError(f"this LETS configuration trains {mode!r}, not a LoRA",
                        "lora-train imports LoRA configurations (train_mode = \"lora\")")
    subsets = [s for s in data.get("subsets") or [] if isinstance(s, dict)]
    return options, subsets


# LETS popup-era JSON keys -> sd-scripts options (wizard-anchors.md, phase 1 and 2).
LETS_JSON = {
    "base_model": "pretrained_model_name_or_path", "img_folder": "train_data_dir",
    "output_folder": "output_dir", "change_output_name": "output_name",
    "reg_img_folder": "reg_data_dir", "net_dim": "network_dim", "alpha": "network_alpha",
    "scheduler": "lr_scheduler", "cosine_restarts": "lr_scheduler_num_cycles",
    "scheduler_power": "lr_scheduler_power", "train_resolution": "resolution",
    "batch_size": "train_batch_size", "num_epochs": "max_train_epochs",
    "max_steps": "max_train_steps", "warmup_lr_ratio": "lr_warmup_steps",
    "shuffle_captions": "shuffle_caption", "unet_only": "network_train_unet_only",
    "text_only": "network_train_text_encoder_only", "save_at_n_epochs": "save_every_n_epochs",
    "sample_every_n_epoch": "sample_every_n_epochs", "vae": "vae",
    "tag_occurrence_txt_file": "tag_summary",
}
LETS_JSON_OWN = {"multi_run_folder", "load_json_path", "save_json_folder", "save_json_name",
                 "save_json_only", "json_load_skip_list", "sort_tag_occurrence_alphabetically",
                 "height_resolution", "lyco", "buckets", "use_8bit_adam"}


def read_lets_json(data: dict, mapped: Mapped) -> Options:
    options: Options = []
    height = data.get("height_resolution")
    for key, value in data.items():
        if key in LETS_JSON_OWN:
            if key in ("height_resolution", "lyco"):
                continue
            mapped.note(key, NO_EFFECT, "LoRA Easy Training Scripts' own setting (how it "
                        "saved or loaded its files)", value)
            continue
        name = LETS_JSON.get(key, key)
        if name == "resolution" and height not in (None, "", value):
            value = f"{value},{height}"
        if key == "tag_occurrence_txt_file" and value:
            options.append(("tag_summary", True))
            continue
        options.append((name, value))
    if data.get("lyco") and not any(n == "network_module" for n, _ in options):
        options.append(("network_module", "lycoris.kohya"))
    return options


# kohya_ss GUI JSON: LoRA_type -> network_module (None: not supported here).
KOHYA_LORA_TYPES = {"standard": "LoRA", "kohya locon": "LoCon", "lycoris/locon": "LoCon",
                    "locon": "LoCon", "lycoris/loha": "LoHa", "lycoris/lokr": "LoKr"}
# kohya_ss GUI keys that are not sd-scripts options: (status, why) when switched on.
KOHYA_OWN = {
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
    "use_wandb": (NOT_SUPPORTED, "Weights & Biases logging is not supported yet"),
    "save_as_bool": (NO_EFFECT, "a kohya_ss GUI setting"),
    "model_list": (NO_EFFECT, "a kohya_ss GUI setting (the model is given by its path)"),
    "conv_dims": (NOT_SUPPORTED, "per-block convolution dims in kohya_ss' form: use "
                  "conv_block_dims"),
    "conv_alphas": (NOT_SUPPORTED, "per-block convolution alphas in kohya_ss' form: use "
                    "conv_block_alphas"),
    "LyCORIS_preset": (NOT_SUPPORTED, "LyCORIS presets are not supported"),
    "train_on_input": (NOT_SUPPORTED, "a LyCORIS (iA3) setting with no equivalent here"),
    "v_pred_like_loss": (NOT_SUPPORTED, "not supported yet"),
    "sdxl_cache_text_encoder_outputs": (MAPPED, ""),
    "sdxl_no_half_vae": (MAPPED, ""),
}


def read_kohya_gui_json(data: dict, mapped: Mapped) -> Options:
    options: Options = []
    lora_type = str(data.get("LoRA_type", "Standard"))
    module = KOHYA_LORA_TYPES.get(lora_type.lower())
    if module is None:
        raise LoraError(f"this kohya_ss configuration trains LoRA_type {lora_type!r}, "
                        "which lora-train does not train",
                        "the types it trains: Standard, Kohya LoCon, LyCORIS/LoCon, "
                        "LyCORIS/LoHa, LyCORIS/LoKr")
    options.append(("network_module", module))
    mapped.lines.append(Line("LoRA_type", MAPPED, "[network] network_module",
                             f"read as \"{module}\"", lora_type))
    for key, value in data.items():
        if key in ("LoRA_type", "additional_parameters"):
            continue
        off = value in (None, "", False, 0, "0", "none", "no")
        if key in KOHYA_OWN:
            if off:
                mapped.note(key, OFF, "off in the source", value)
            elif key == "sdxl_no_half_vae":
                options.append(("no_half_vae", True))
            elif key == "sdxl_cache_text_encoder_outputs":
                options.append(("cache_text_encoder_outputs", True))
            else:
                status, why = KOHYA_OWN[key]
                mapped.note(key, status, why, value)
            continue
        if key in ("conv_dim", "conv_alpha") and module == "LoRA":
            if off:
                mapped.note(key, OFF, "off in the source", value)
            else:
                mapped.note(key, NO_EFFECT, "LoRA_type Standard trains no convolution "
                            "layers (kohya_ss leaves it out too)", value)
            continue
        options.append((key, value))
    extra = str(data.get("additional_parameters") or "").strip()
    if extra:
        options += read_command_line(extra, mapped)
    return options


def detect_json(data: dict) -> str:
    """"kohya_ss" or "lets-json" for a JSON settings file; LoraError when it is neither."""
    if not isinstance(data, dict):
        raise LoraError("this JSON is not a settings file (it is not an object of "
                        "settings)", "give a kohya_ss GUI or LoRA Easy Training Scripts JSON")
    if "LoRA_type" in data or "max_resolution" in data or "lr_warmup" in data:
        return "kohya_ss"
    if {"base_model", "img_folder", "net_dim"} & set(data):
        return "lets-json"
    if "pretrained_model_name_or_path" in data or "train_data_dir" in data:
        return "kohya_ss"
    raise LoraError("this JSON is none of the known settings forms",
                    "lora-train imports kohya_ss GUI JSON, LoRA Easy Training Scripts JSON or "
                    "TOML, sd-scripts TOML, a training command line or a LoRA file")


def subsets_dataset(subsets: list[dict], mapped: Mapped) -> Options:
    """LETS ``[[subsets]]`` as train_data_dir / reg_data_dir when each folder is
    ``<repeats>_<name>`` with its repeats and the folders share a parent (the layout the
    profile reads); else the subsets are listed for a dataset_config."""
    from pathlib import PureWindowsPath

    options: Options = []
    for is_reg, key in ((False, "train_data_dir"), (True, "reg_data_dir")):
        chosen = [s for s in subsets if bool(s.get("is_reg")) == is_reg and s.get("image_dir")]
        if not chosen:
            continue
        parents, fits = set(), True
        for subset in chosen:
            folder = PureWindowsPath(str(subset["image_dir"]).replace("/", "\\"))
            repeats = str(subset.get("num_repeats", 1))
            fits = fits and folder.name.split("_", 1)[0] == repeats
            parents.add(str(subset["image_dir"])[: -len(folder.name)].rstrip("/\\"))
        if fits and len(parents) == 1:
            options.append((key, parents.pop()))
            mapped.lines.append(Line("[[subsets]] image_dir", MAPPED, f"[dataset] {key}",
                                     f"the parent of {len(chosen)} <repeats>_<name> "
                                     "folder(s); their repeats are in their names"))
        else:
            mapped.note("[[subsets]]", NOT_SUPPORTED, "these folders are not "
                        "<repeats>_<name> folders of one parent: write them as a "
                        "dataset_config TOML and set [dataset] dataset_config", [
                            s.get("image_dir") for s in chosen])
        for option in ("caption_extension", "keep_tokens", "shuffle_caption", "flip_aug",
                       "color_aug", "random_crop", "keep_tokens_separator",
                       "caption_prefix", "caption_suffix"):
            values = {str(s[option]) for s in chosen if option in s}
            if len(values) == 1 and not is_reg:
                options.append((option, chosen[0][option]))
    leftover = {k for s in subsets for k in s} - _LETS_SUBSET
    for key in sorted(leftover):
        mapped.note(f"[[subsets]] {key}", NOT_SUPPORTED, "a per-folder setting with no "
                    "equivalent here")
    if not subsets:
        mapped.note("[[subsets]]", OFF, "no image folders in the source")
    return options
