"""The forms settings come in (besides command lines: ``command_line``; kohya_ss GUI JSON:
``kohya_gui``), each read into sd-scripts' option names.

- sd-scripts' ``--config_file`` TOML (tables of any name, flattened as sd-scripts does);
- a LoRA Easy Training Scripts TOML (``[general_args.args]``, ``[network_args.args]``, ...,
  ``[[subsets]]``, kept as a dataset_config) and a LETS popup-era JSON (``base_model``,
  ``img_folder``, ``net_dim``...).

Each reader returns the options in order plus the lines it accounts for itself.
"""

from __future__ import annotations

from typing import Any

from lora_core.errors import LoraError
from lora_core.importing.mapping import (
    MAPPED,
    NO_EFFECT,
    NOT_SUPPORTED,
    OFF,
    UNKNOWN,
    Line,
    Mapped,
)

Options = list[tuple[str, Any]]


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


# LETS' own settings (its UI's, not sd-scripts options), and why they mean nothing here.
LETS_TOML_OWN = {
    "save_toml": "LoRA Easy Training Scripts' own setting: it saves a copy of its settings "
                 "as a TOML; lora-train keeps the profile in every run folder",
    "save_toml_location": "LoRA Easy Training Scripts' own setting: where it saves that copy",
    "tag_file_location": "LoRA Easy Training Scripts' own setting: where it writes its tag "
                         "file; lora-train's tag summary goes beside the LoRA",
    "log_prefix_mode": "LoRA Easy Training Scripts' own setting: how it names its log runs",
    "run_name_mode": "LoRA Easy Training Scripts' own setting: how it names its log runs",
}


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
            for key, value in (tables.get(kind) or {}).items():
                if key == "sdxl":  # LETS runs sdxl_train_network.py for it
                    mapped.note(key, NO_EFFECT if value else OFF, "the model family (SDXL) "
                                "is read from the model file", value)
                elif key in LETS_TOML_OWN:
                    mapped.note(key, NO_EFFECT if value not in (None, "", False) else OFF,
                                LETS_TOML_OWN[key], value)
                elif key == "tag_occurrence":  # LETS' tag-count file: the tag summary
                    options.append(("tag_summary", value))
                elif group == "flux_args":
                    options += _lets_flux(key, value, tables.get(kind) or {}, mapped)
                else:
                    options.append((key, value))
    mode = (data.get("train_mode") or {}).get("train_mode", "lora")
    if str(mode).lower() not in ("lora", ""):
        raise LoraError(f"this LETS configuration trains {mode!r}, not a LoRA",
                        "lora-train imports LoRA configurations (train_mode = \"lora\")")
    subsets = [s for s in data.get("subsets") or [] if isinstance(s, dict)]
    return options, subsets


def _lets_flux(key: str, value: Any, table: dict, mapped: Mapped) -> Options:
    """One key of LETS' ``[flux_args.args]`` (its Flux page, main_ui_files/FluxUI.py; the
    table's presence makes its backend run flux_train_network.py). The backend passes no
    value that is false, 0 or empty (utils/validation.py: ``if not val: continue``): LETS
    writes ``discrete_flow_shift = false`` when the sampling is not "shift". ``split_mode``
    is sd-scripts' deprecated switch, which it reads as ``blocks_to_swap`` 18 when that is
    unset (LETS adds ``train_blocks = "single"`` to network_args with it)."""
    if not value:
        mapped.note(key, OFF, "off or empty: LoRA Easy Training Scripts passes no false, 0 "
                    "or empty value", value)
        return []
    if key == "weighting_scheme" and str(value).lower() == "none":  # a choice, not "unset"
        mapped.set("flux", key, "none", key, "sd-scripts' weighting_scheme none")
        return []
    if key == "split_mode":
        if table.get("blocks_to_swap"):
            mapped.note(key, NO_EFFECT, "deprecated: sd-scripts ignores it when "
                        "blocks_to_swap is set", value)
        else:
            mapped.set("training", "blocks_to_swap", 18, key, "sd-scripts reads the "
                       "deprecated split_mode as blocks_to_swap 18")
            mapped.lines[-1].value = value
        return []
    return [(key, value)]


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
                 "height_resolution", "lyco", "buckets"}


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


def subsets_dataset(subsets: list[dict], mapped: Mapped) -> dict | None:
    """LETS ``[[subsets]]`` as they are: a dataset_config with one subset each (its folder,
    repeats and own caption settings), so folders beside them that the file does not list
    are not trained. The dataset's other values stay in the profile, which the config's
    subsets fall back to. None when the file lists no folder."""
    from lora_core.dataset.dataset_config import (
        SD_SCRIPTS_KEYS,
        SUBSET_KEYS,
        SUBSET_ONLY_KEYS,
        SUPPORTED_KEYS,
    )

    kept = []
    for index, subset in enumerate(subsets):
        if not subset.get("image_dir"):
            mapped.note(f"[[subsets]] {index + 1}", OFF, "no image_dir: no folder to train")
            continue
        out = {}
        for key, value in subset.items():
            where = f"[[subsets]] {key}"
            if key == "name":
                continue  # LETS' label for the subset's tab
            if key in (SUBSET_KEYS | SUBSET_ONLY_KEYS) and key in SUPPORTED_KEYS:
                if value not in ("", None):
                    out[key] = value
            elif key in SD_SCRIPTS_KEYS:
                mapped.note(where, NOT_SUPPORTED, "a per-folder setting sd-scripts has and "
                            "lora-train does not support yet; left out", value)
            else:
                mapped.note(where, UNKNOWN, "not a per-folder setting sd-scripts knows; "
                            "left out", value)
        out.setdefault("num_repeats", 1)
        kept.append(out)
    if not kept:
        mapped.note("[[subsets]]", OFF, "no image folders in the source")
        return None
    mapped.lines.append(Line("[[subsets]]", MAPPED, "[dataset] dataset_config", (
        f"{len(kept)} folder(s) as listed, each with its own repeats: written as a "
        "dataset_config beside the profile (subsets stay subsets; sibling folders are not "
        "trained)"), [s["image_dir"] for s in kept]))
    return {"datasets": [{"subsets": kept}]}
