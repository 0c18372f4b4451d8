"""`lora-train export PROFILE --sd-scripts DIR`: the profile as sd-scripts itself runs it.

Writes into DIR:
- ``config.toml``: sd-scripts' ``--config_file`` (every option in one table);
- ``dataset_config.toml``: ``--dataset_config`` with a subset per ``<repeats>_<name>``
  folder of the image and regularization folders (or the profile's own dataset_config);
- ``command.sh`` and ``command.bat``: one flat ``accelerate launch train_network.py``
  command line with every option (the folders as ``--train_data_dir`` / ``--reg_data_dir``),
  POSIX and Windows;
- ``NOT-EXPORTED.txt``: the settings sd-scripts has no equivalent for.

Every value is written, defaults included: sd-scripts' defaults differ from this project's
(optimizer, scheduler, alpha), so leaving one out would change the run.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import tomli_w

from lora_core.atomic import atomic_write
from lora_core.dataset.scan import parse_folder_name
from lora_core.errors import LoraError
from lora_core.profile import SECTIONS, Profile

# Fields sd-scripts reads from --network_args rather than as options of their own.
NETWORK_ARGS = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "factor",
                "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                "dora_wd", "dylora_unit", "constraint", "rescaled", "train_on_input")
# network_args names that differ from the field (sd-scripts' DyLoRA calls its unit "unit").
NETWORK_ARG_NAMES = {"dylora_unit": "unit"}
# Values that are the default and need not be written.
NETWORK_ARG_DEFAULTS = {"factor": -1, "block_lr_zero_threshold": 0, "dylora_unit": 4,
                        "constraint": 0.0, "rescaled": False, "train_on_input": False,
                        "dora_wd": False}
# Fields with no sd-scripts equivalent, and why.
NO_EQUIVALENT = {
    "fused_optimizer": "sd-scripts fuses the optimizer step only for AdaFactor "
                       "(--fused_backward_pass)",
    "save_state_every_n_minutes": "sd-scripts saves states by epochs or steps only",
    "save_last_n_states": "sd-scripts counts kept states by epochs or steps "
                          "(--save_last_n_epochs_state / --save_last_n_steps_state)",
    "tag_summary": "sd-scripts writes no tag summary file",
    "tag_summary_order": "sd-scripts writes no tag summary file",
    "network_args": "read into the fields it names",
}
# Fields the dataset_config holds instead of the command line.
DATASET_FIELDS = ("train_data_dir", "reg_data_dir")
# Dataset fields sd-scripts reads per subset in a dataset_config (kohya-compat.md §2.2).
SUBSET_KEYS = ("caption_extension", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
               "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
               "caption_dropout_rate", "caption_dropout_every_n_epochs",
               "caption_tag_dropout_rate", "token_warmup_min", "token_warmup_step",
               "flip_aug", "color_aug", "random_crop")
LORA_MODULES = {"LoRA": ("networks.lora", None), "LoCon": ("networks.lora", None),
                "LoHa": ("lycoris.kohya", "loha"), "LoKr": ("lycoris.kohya", "lokr"),
                "DyLoRA": ("networks.dylora", None), "Full": ("lycoris.kohya", "full"),
                "IA3": ("lycoris.kohya", "ia3"), "DiagOFT": ("lycoris.kohya", "diag-oft"),
                "BOFT": ("lycoris.kohya", "boft"), "GLoRA": ("lycoris.kohya", "glora")}


def sd_scripts_options(profile: Profile) -> tuple[list[tuple[str, Any]], list[str]]:
    """The profile as sd-scripts options, in field order (``True`` = a flag, a list = several
    values), and the lines of what is not exported."""
    options: list[tuple[str, Any]] = []
    network_args: list[str] = []
    left_out: list[str] = []
    for section_name, cls in SECTIONS.items():
        section = getattr(profile, section_name)
        for f in dataclasses.fields(cls):
            key, value = f.name, getattr(section, f.name)
            if key in NO_EQUIVALENT:
                if value not in (None, "", [], False) and key != "network_args":
                    left_out.append(f"[{section_name}] {key} = {value!r}: "
                                    f"{NO_EQUIVALENT[key]}")
                continue
            if key == "optimizer_args":
                from lora_core.training.optimizer_args import optimizer_args_list

                value = optimizer_args_list(profile.optimizer)  # the defaults it runs with
            if value is None or value == "" or value is False or value == []:
                continue
            if key == "network_module":
                module, algo = LORA_MODULES[value]
                if profile.network.dora_wd:  # DoRA is LyCORIS' (lora / locon / loha / lokr)
                    module, algo = "lycoris.kohya", algo or value.lower()
                options.append(("network_module", module))
                if algo:
                    network_args.append(f"algo={algo}")
                if value == "LoCon" and profile.network.conv_dim is None:
                    network_args.append(f"conv_dim={profile.network.network_dim}")
                continue
            if key in NETWORK_ARGS:
                if key in NETWORK_ARG_DEFAULTS and value == NETWORK_ARG_DEFAULTS[key]:
                    continue
                network_args.append(f"{NETWORK_ARG_NAMES.get(key, key)}={str(value)}")
                continue
            if key == "pretrained_model_name_or_path" and str(value).startswith("builtin:"):
                left_out.append(f"[model] {key} = {value!r}: a built-in test model of "
                                "lora-train; give sd-scripts a real model file")
            if key == "resolution":
                value = f"{value[0]},{value[1]}"
            options.append((key, value))
    if network_args:
        options.append(("network_args", network_args))
    return options, left_out


def dataset_config(profile: Profile) -> dict[str, Any] | None:
    """sd-scripts' dataset_config for the profile's folders: a subset per
    ``<repeats>_<name>`` folder (regularization ones with ``is_reg``)."""
    ds = profile.dataset
    subsets = []
    for key, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
        root = profile.path("dataset", key)
        if root is None or not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            parsed = parse_folder_name(folder.name)
            if parsed is None:
                continue
            repeats, tokens = parsed
            subset = {"image_dir": str(folder), "num_repeats": repeats, "is_reg": is_reg}
            if tokens:
                subset["class_tokens"] = tokens
            subsets.append(subset)
    if not subsets:
        return None
    general = {key: getattr(ds, key) for key in SUBSET_KEYS
               if getattr(ds, key) not in (None, "")}
    width, height = ds.resolution
    dataset = {"resolution": [width, height], "batch_size": profile.training.train_batch_size,
               "enable_bucket": ds.enable_bucket, "min_bucket_reso": ds.min_bucket_reso,
               "max_bucket_reso": ds.max_bucket_reso, "bucket_reso_steps":
               ds.bucket_reso_steps, "bucket_no_upscale": ds.bucket_no_upscale,
               "subsets": subsets}
    return {"general": general, "datasets": [dataset]}


def command_line(options: list[tuple[str, Any]], windows: bool, script: str) -> str:
    """One ``accelerate launch`` command, an option per line."""
    quote = _quote_windows if windows else shlex.quote
    lines = [f"accelerate launch --num_cpu_threads_per_process 1 {script}"]
    for key, value in options:
        if value is True:
            lines.append(f"--{key}")
        elif isinstance(value, list):
            lines.append(f"--{key} " + " ".join(quote(str(v)) for v in value))
        else:
            lines.append(f"--{key}={quote(str(value))}")
    return (" ^\n  " if windows else " \\\n  ").join(lines) + "\n"


def _quote_windows(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ' \t&|<>^,;=()"') or not text else text


def export_sd_scripts(profile: Profile, folder: Path) -> list[Path]:
    """Write the four files into ``folder`` (created); returns them. Existing files of the
    same names are refused, never replaced."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    options, left_out = sd_scripts_options(profile)
    config = dataset_config(profile) if not profile.dataset.dataset_config else None
    names = ["config.toml", "command.sh", "command.bat", "NOT-EXPORTED.txt"]
    if config is not None:
        names.insert(1, "dataset_config.toml")
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise LoraError(f"{folder / taken[0]} exists already", "export into a new or empty "
                        "folder; files are never replaced")
    # The config file points at the dataset_config; the command line keeps the folders
    # (sd-scripts reads <repeats>_<name> folders the same way): two routes, one run.
    file_options = options
    if config is not None:
        file_options = [(k, v) for k, v in options if k not in DATASET_FIELDS]
        file_options.append(("dataset_config",
                             str((folder / "dataset_config.toml").resolve())))
    family_script = "train_network.py"
    from lora_core.checks.inputs import inspect_profile_model

    source = inspect_profile_model(profile)
    if getattr(source, "family", None) == "sdxl":
        family_script = "sdxl_train_network.py"
    files = {"config.toml": tomli_w.dumps({"lora_train_export": dict(file_options)}),
        "command.sh": "#!/usr/bin/env bash\n" + command_line(options, False, family_script),
        "command.bat": "@echo off\r\n" + command_line(options, True, family_script)
        .replace("\n", "\r\n"),
        "NOT-EXPORTED.txt": ("Settings sd-scripts has no equivalent for:\n" + "".join(
            f"  {line}\n" for line in left_out)) if left_out else
        "Every setting of the profile is exported.\n"}
    if config is not None:
        files["dataset_config.toml"] = tomli_w.dumps(config)
    written = []
    for name in names:
        path = folder / name
        atomic_write(path, lambda tmp, text=files[name]: tmp.write_text(text, encoding="utf-8"),
                     exclusive=True)
        written.append(path)
    return written
