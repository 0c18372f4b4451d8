"""sd-scripts options (name -> value) into a profile, with a line for every option.

Every form an import reads (a command line, a `--config_file` TOML, LETS' and kohya_ss'
files, a LoRA's metadata) is first turned into sd-scripts' own option names; this module puts
each one where it belongs: the profile field of that name (the profile uses sd-scripts' names
and meanings), a field under another name (``ALIASES``), an option that changes nothing here
(``profile.HARMLESS_KEYS`` and accelerate's process options), or one this version does not
support. Nothing is dropped without a line saying so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from lora_core.checks.fields import owner_section
from lora_core.profile import HARMLESS_KEYS, NOT_YET_KEYS, PROFILE_VERSION, SECTIONS

MAPPED, NO_EFFECT, NOT_SUPPORTED, UNKNOWN, OFF = (
    "mapped", "no effect here", "not supported", "unknown", "off in the source")

# Other names for fields: sd-scripts' older or shorter names and the tools' own.
ALIASES = {
    "max_train_epoch": "max_train_epochs", "sample_every_n_epoch": "sample_every_n_epochs",
    "lora_network_weights": "network_weights", "epoch": "max_train_epochs",
    "max_resolution": "resolution", "batch_size": "train_batch_size",
    "optimizer": "optimizer_type", "num_epochs": "max_train_epochs",
    "batch_size_per_device": "train_batch_size", "debiased_estimation": "debiased_estimation_loss",
    "warmup_ratio": "lr_warmup_steps", "dropout": "network_dropout",
}
# accelerate launch's own options (before the script's name) and what becomes of them.
ACCELERATE = {
    "num_cpu_threads_per_process": "torch sets its CPU threads itself",
    "num_machines": "one machine per run", "machine_rank": "one machine per run",
    "main_process_port": "lora-train picks a free port for its processes",
    "main_process_ip": "one machine per run",
    "multi_gpu": "lora-train launches [training] num_processes processes itself",
    "dynamo_backend": "torch.compile is not used",
    "mixed_precision": "", "config_file": "accelerate's own settings file is not read",
}
# Keys of a source that are facts about a finished run, not settings (LoRA metadata).
FACTS = {"session_id", "training_started_at", "training_finished_at", "num_train_images",
         "num_reg_images", "num_validation_images", "num_batches_per_epoch", "steps", "epoch",
         "total_batch_size", "sd_model_hash", "new_sd_model_hash", "vae_hash", "new_vae_hash",
         "tag_frequency", "bucket_info", "dataset_dirs", "reg_dataset_dirs", "datasets",
         "sd_scripts_commit_hash", "sd_model_name", "vae_name", "max_train_steps_recorded",
         "network_module_path", "lora_tui_version"}
# sd-scripts' own defaults where this project's differ (train_network.py's argument defaults):
# a command or config file that leaves an option out runs with these, so an import sets them.
SD_SCRIPTS_DEFAULTS = {
    ("dataset", "enable_bucket"): False, ("dataset", "caption_extension"): ".caption",
    ("dataset", "max_data_loader_n_workers"): 8, ("network", "network_dim"): 4,
    ("network", "network_alpha"): 1.0, ("optimizer", "optimizer_type"): "AdamW",
    ("optimizer", "optimizer_args"): [], ("optimizer", "learning_rate"): 2e-6,
    ("optimizer", "lr_scheduler"): "constant", ("training", "mixed_precision"): "no",
    ("saving", "save_precision"): "float", ("saving", "save_state"): False,
}
# Values a source writes for "not set".
UNSET = (None, "", "None", "none", "null")


@dataclass
class Line:
    """What became of one option of the source."""

    option: str
    status: str
    where: str = ""  # "[section] key" for a mapped option
    why: str = ""
    value: Any = None

    def text(self) -> str:
        shown = f" = {json.dumps(self.value)}" if self.value is not None \
            and self.status != OFF else ""
        if self.status == MAPPED:
            return f"  {self.option}{shown} -> {self.where}" + (f" ({self.why})"
                                                                 if self.why else "")
        return f"  {self.option}{shown}: {self.why}" if self.why else f"  {self.option}{shown}"


@dataclass
class Mapped:
    """The profile's data (TOML-ready) and the account of every option."""

    data: dict[str, Any] = field(default_factory=lambda: {"profile_version": PROFILE_VERSION})
    lines: list[Line] = field(default_factory=list)

    def set(self, section: str, key: str, value: Any, option: str, why: str = "") -> None:
        self.data.setdefault(section, {})[key] = value
        self.lines.append(Line(option, MAPPED, f"[{section}] {key}", why, value))

    def has(self, section: str, key: str) -> bool:
        return key in self.data.get(section, {})

    def note(self, option: str, status: str, why: str, value: Any = None) -> None:
        self.lines.append(Line(option, status, why=why, value=value))


_FIELD_NAMES = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}


def field_name(option: str) -> str | None:
    """The profile field an sd-scripts option sets (its own name, an alias, or the one field
    it is an unambiguous prefix of, as sd-scripts' argument parser allows), or None."""
    option = option.strip().lstrip("-").replace("-", "_")
    if option in _FIELD_NAMES:
        return option
    if option in ALIASES:
        return ALIASES[option]
    if len(option) >= 6:
        found = [name for name in _FIELD_NAMES if name.startswith(option)]
        if len(found) == 1 and option not in NOT_YET_KEYS and option not in HARMLESS_KEYS:
            return found[0]
    return None


def plain(value: Any) -> Any:
    """A source's value as a profile value: TOML has no None, numbers written as text are
    numbers (kohya_ss writes "0.0001"), a whole float is an int."""
    if isinstance(value, str):
        text = value.strip()
        for kind in (int, float):
            try:
                number = kind(text)
            except ValueError:
                continue
            return number
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def args_list(value: Any) -> list[str]:
    """``network_args`` / ``optimizer_args`` in sd-scripts' form, ["name=value", ...], from a
    list, a dict (LETS) or a space-separated string (kohya_ss)."""
    if isinstance(value, dict):
        return [f"{k}={_arg_text(v)}" for k, v in value.items() if v not in UNSET]
    if isinstance(value, str):
        return [item for item in value.split() if item]
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value if str(item).strip()]
    return [str(value)]


def _arg_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def apply_sd_scripts_defaults(mapped: Mapped) -> None:
    """sd-scripts' defaults for what the source leaves out (SD_SCRIPTS_DEFAULTS), and its
    1600 steps when neither epochs nor steps are given."""
    for (section, key), value in SD_SCRIPTS_DEFAULTS.items():
        if not mapped.has(section, key):
            mapped.set(section, key, value, f"({key} not in the source)", "sd-scripts' default")
    if not mapped.has("training", "max_train_epochs") and \
            not mapped.has("training", "max_train_steps"):
        mapped.set("training", "max_train_steps", 1600, "(max_train_steps not in the source)",
                   "sd-scripts' default")


def map_options(options: list[tuple[str, Any]], mapped: Mapped | None = None) -> Mapped:
    """Put each ``(option, value)`` (sd-scripts' names) where it belongs; later options win
    over earlier ones, as on sd-scripts' command line."""
    mapped = mapped or Mapped()
    for option, raw in options:
        name = option.strip().lstrip("-").replace("-", "_")
        value = plain(raw)
        key = field_name(name)
        if key is None:
            _not_a_field(mapped, name, value)
            continue
        if value in UNSET:
            mapped.note(name, OFF, "not set in the source: the default is kept")
            continue
        section = owner_section(key)
        assert section is not None
        if isinstance(raw, str) and _is_text(section, key):
            value = raw.strip()  # a path or a name stays as written ("0001" too)
        if key in ("optimizer_args", "network_args"):
            value = args_list(raw)
            if not value:
                continue
            value = mapped.data.get(section, {}).get(key, []) + value
        elif key == "resolution" and isinstance(raw, (list, tuple)):
            value = ",".join(str(plain(v)) for v in raw)
        elif key == "lr_warmup_steps" and name == "lr_warmup":
            value = float(value) / 100  # kohya_ss: a percentage of all steps
        why = "" if key == name else f"sd-scripts' {key}"
        mapped.set(section, key, value, name, why)
    return mapped


def _is_text(section: str, key: str) -> bool:
    import typing

    from lora_core.values import type_parts

    hint = typing.get_type_hints(SECTIONS[section])[key]
    return str in type_parts(hint)[0]


def _not_a_field(mapped: Mapped, name: str, value: Any) -> None:
    if name in HARMLESS_KEYS:
        mapped.note(name, NO_EFFECT, HARMLESS_KEYS[name], value)
    elif value in UNSET or value is False or value == 0:
        mapped.note(name, OFF, "off or empty in the source: nothing to carry over", value)
    elif name in NOT_YET_KEYS:
        mapped.note(name, NOT_SUPPORTED, "an sd-scripts option this version does not "
                    "support yet; the run goes without it", value)
    else:
        mapped.note(name, UNKNOWN, "not an option lora-train knows; left out", value)
