"""`lora-train export PROFILE --sd-scripts DIR`: the profile as sd-scripts itself runs it.

Writes into DIR:
- ``config.toml``: sd-scripts' ``--config_file`` (every option in one table);
- ``dataset_config.toml``: ``--dataset_config`` with a subset per ``<repeats>_<name>``
  folder of the image and regularization folders (or the profile's own dataset_config);
- ``command.sh`` and ``command.bat``: one flat ``accelerate launch train_network.py``
  command line with every option (the folders as ``--train_data_dir`` / ``--reg_data_dir``),
  POSIX and Windows; ``sdxl_train_network.py`` for SDXL, ``flux_train_network.py`` (with the
  ``[flux]`` options and ``networks.lora_flux``) for Flux.1 / Chroma;
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
from lora_core.family_registry import family as family_named
from lora_core.profile import OPTIONAL_SECTIONS, SECTIONS, Profile
from lora_core.profile_flux import LORA_FLUX_ARGS, lora_flux_network_args

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
    "early_stopping_patience": "sd-scripts has no early stopping (nor a best file)",
    "fused_optimizer": "sd-scripts fuses the optimizer step only for AdaFactor "
                       "(--fused_backward_pass)",
    "save_state_every_n_minutes": "sd-scripts saves states by epochs or steps only",
    "save_last_n_states": "sd-scripts counts kept states by epochs or steps "
                          "(--save_last_n_epochs_state / --save_last_n_steps_state)",
    "tag_summary": "sd-scripts writes no tag summary file",
    "tag_summary_order": "sd-scripts writes no tag summary file",
    "network_args": "read into the fields it names",
}
# accelerate launch's options (before the script's name): sd-scripts' parsers refuse them.
ACCELERATE_FIELDS = ("num_processes", "gpu_ids")
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


def _notify_left_out(section) -> list[str]:
    """``[notify]`` is lora-train's own; said without a literal webhook URL (a secret)."""
    from lora_core.notify import destinations

    return [f"[notify] {where}: sd-scripts sends no notifications"
            for where in destinations(section)]


def sd_scripts_options(profile: Profile, family_name: str | None = None
                       ) -> tuple[list[tuple[str, Any]], list[str]]:
    """The profile as sd-scripts options, in field order (``True`` = a flag, a list = several
    values), and the lines of what is not exported. ``family_name``: the base model's; its
    own tables (Flux's ``[flux]``) are exported, another family's left out (only that
    family's script defines those options), and a LoRA is its family's LoRA module
    (networks.lora, networks.lora_flux)."""
    options: list[tuple[str, Any]] = []
    network_args: list[str] = []
    left_out: list[str] = []
    fam = family_named(family_name) if family_name else None
    own_sections = fam.profile_sections if fam else ()
    for section_name, cls in SECTIONS.items():
        section = getattr(profile, section_name)
        if section_name == "notify":
            left_out += _notify_left_out(section)
            continue
        if section_name in OPTIONAL_SECTIONS and section_name not in own_sections:
            continue  # at its defaults for this family (the check refuses anything else)
        for f in dataclasses.fields(cls):
            key, value = f.name, getattr(section, f.name)
            if key in LORA_FLUX_ARGS:  # [flux]'s only
                continue  # networks.lora_flux's network_args: added below
            if key == "network_multiplier":  # a dataset_config key in sd-scripts, no option
                if value != 1.0:
                    left_out.append(f"[network] {key} = {value!r}: sd-scripts reads it from a "
                                    "dataset_config only: it is in dataset_config.toml, which "
                                    "config.toml uses; the command lines go without it")
                continue
            if fam is not None and key in fam.sd_scripts_lacks:
                if value not in (None, "", [], False):
                    left_out.append(f"[{section_name}] {key} = {value!r}: "
                                    f"{fam.sd_scripts_lacks[key]}")
                continue
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
            if key == "network_module" and fam is not None and value == "LoRA":
                options.append(("network_module", fam.lora_module))
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
            if key in ("lr_warmup_steps", "lr_decay_steps") and value >= 1:
                # sd-scripts' int_or_float reads a value >= 1 as an int only ("3", not "3.0")
                if value != int(value):
                    left_out.append(f"[{section_name}] {key} = {value!r}: sd-scripts takes a "
                                    f"whole number of steps (or a ratio below 1): exported as "
                                    f"{int(value)}")
                value = int(value)
            if key == "max_token_length" and value == 75:
                continue  # sd-scripts' default: its parser takes only None, 150 or 225
            if isinstance(value, tuple):
                value = list(value)  # several values (text_encoder_lr A B), never "(A, B)"
            options.append((key, value))
    if "flux" in own_sections:  # networks.lora_flux's network_args, from [flux]
        network_args += [f"{k}={v}" for k, v in lora_flux_network_args(profile.flux).items()]
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
    if profile.network.network_multiplier != 1.0:
        dataset["network_multiplier"] = profile.network.network_multiplier
    return {"general": general, "datasets": [dataset]}


def family_script(profile: Profile) -> tuple[str, str | None]:
    """The sd-scripts script for the profile's model family, and a note when it cannot be
    told from the model file: an SDXL-only setting in the profile (cache_text_encoder_outputs,
    which only sdxl_train_network.py defines) says SDXL; else the script is
    train_network.py, and the note says that it could not tell. Two text-encoder rates say
    nothing: train_network.py takes several too (``--text_encoder_lr`` is nargs="*")."""
    from lora_core.checks.inputs import inspect_profile_model

    source = inspect_profile_model(profile)
    family = getattr(source, "family", None)
    if family is not None:
        return family_named(family).sd_scripts_script, None
    model = profile.model.pretrained_model_name_or_path
    ds, lr = profile.dataset, profile.optimizer.text_encoder_lr
    if ds.cache_text_encoder_outputs or ds.cache_text_encoder_outputs_to_disk:
        return "sdxl_train_network.py", (
            f"the base model {model!r} could not be read here, so its family comes from the "
            "profile's SDXL-only setting (cache_text_encoder_outputs): sdxl_train_network.py")
    rates = (" (two text-encoder rates do not tell: train_network.py takes several too)"
             if isinstance(lr, (tuple, list)) else "")
    return "train_network.py", (
        f"the base model {model!r} could not be read here, so lora-train could not tell its "
        f"family{rates}: the commands run train_network.py (SD 1.x / 2.x); for an SDXL model "
        "run sdxl_train_network.py instead")


def command_line(options: list[tuple[str, Any]], windows: bool, script: str,
                 launcher: list[tuple[str, Any]] = ()) -> str:
    """One ``accelerate launch`` command, an option per line: accelerate's options before
    the script, the script's after it."""
    quote = _quote_windows if windows else shlex.quote
    launch = " ".join(f"--{k}" if v is True else f"--{k}={quote(str(v))}" for k, v in launcher)
    lines = [f"accelerate launch --num_cpu_threads_per_process 1 {launch} {script}".replace(
        "  ", " ")]
    for key, value in options:
        if value is True:
            lines.append(f"--{key}")
        elif isinstance(value, list):
            lines.append(f"--{key} " + " ".join(quote(str(v)) for v in value))
        else:
            lines.append(f"--{key}={quote(str(value))}")
    return (" ^\n  " if windows else " \\\n  ").join(lines) + "\n"


def _quote_windows(text: str) -> str:
    # A .bat expands %NAME% even inside quotes: a literal % is written %%.
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c in text for c in ' \t&|<>^,;=()"') or not text else text


def export_sd_scripts(profile: Profile, folder: Path) -> list[Path]:
    """Write the four files into ``folder`` (created); returns them. Existing files of the
    same names are refused, never replaced."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LoraError(f"{folder} is a file, not a folder; export writes four files into "
                        "a folder", "give a new folder name (it is created); the file is "
                        "left as it is")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoraError(f"cannot create the folder {folder}: {exc.strerror or exc}",
                        "give a folder you can write to") from None
    # sd-scripts reads no v_pred / ztsnr marker tensors: export what the model file decides.
    from lora_core.checks.inputs import inspect_profile_model, resolved_prediction

    source = inspect_profile_model(profile)
    profile = resolved_prediction(profile, source)
    family = getattr(source, "family", None)
    options, left_out = sd_scripts_options(profile, family)
    if family is not None:  # what its script must be told that the profile leaves unset
        options += family_named(family).sd_scripts_told(profile, source)
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
    script, family_note = family_script(profile)
    launcher = [(k, v) for k, v in options if k in ACCELERATE_FIELDS and v not in ("", None)]
    if profile.training.num_processes > 1:
        launcher.insert(0, ("multi_gpu", True))
    # Options of another family's script (SDXL's text-encoder cache, Flux's block swap):
    # the script would stop at them, so they are listed instead.
    from lora_core.importing.sd_scripts_args import SCRIPTS as ALL_SCRIPTS
    from lora_core.importing.sd_scripts_args import options_of

    known = options_of(script)
    dropped = [k for k, _ in options if k not in known and k not in ACCELERATE_FIELDS]
    for key, value in options:
        if key in dropped:
            owners = [s for s in ALL_SCRIPTS if key in options_of(s)]
            left_out.append(f"{key} = {value!r}: only {' / '.join(owners) or 'lora-train'} "
                            f"has it, not {script}")
    options = [(k, v) for k, v in options if k not in ACCELERATE_FIELDS and k not in dropped]
    file_options = [(k, v) for k, v in file_options if k not in ACCELERATE_FIELDS
                    and k not in dropped]
    if family_note:
        left_out.insert(0, family_note)
    header = f"{family_note}\n" if family_note else ""
    files = {"config.toml": tomli_w.dumps({"lora_train_export": dict(file_options)}),
        "command.sh": "#!/usr/bin/env bash\n" + "".join(f"# {line}\n" for line in
                                                        header.splitlines())
        + command_line(options, False, script, launcher),
        "command.bat": ("@echo off\n" + "".join(f"REM {line}\n" for line in
                                                header.splitlines())
                        + command_line(options, True, script, launcher)).replace("\n", "\r\n"),
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
