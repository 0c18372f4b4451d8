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
from lora_core.importing.sd_scripts_args import any_script_option
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
    # sd-scripts passes Accelerator(dynamo_backend=...) itself: "NO" without --torch_compile,
    # its own --dynamo_backend with it, so accelerate launch's never compiles anything.
    "dynamo_backend": "sd-scripts compiles only with its own --torch_compile (and its own "
                      "--dynamo_backend), which it passes to accelerate, overriding this one: "
                      "[training] torch_compile / dynamo_backend",
    # sd-scripts passes its own --mixed_precision (default "no") to Accelerator(), which
    # wins over accelerate launch's: the precision is the script's option, never this one.
    "mixed_precision": "sd-scripts trains in its own --mixed_precision (default \"no\"), "
                       "which it passes to accelerate explicitly: accelerate launch's is "
                       "overridden",
    "config_file": "accelerate's own settings file is not read",
}
# sd-scripts' LoRA module for Flux.1 / Chroma (flux_train_network.py): the profile's "LoRA".
FLUX_NETWORK_MODULE = "networks.lora_flux"
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


class Hidden:
    """A secret's value in a report line: printed as "(hidden)", never as itself."""


HIDDEN = Hidden()
# sd-scripts options whose value is a secret: never echoed, never written into a profile.
SECRET_OPTIONS = ("wandb_api_key", "huggingface_token")


def _shown(value: Any) -> str:
    """A value as the report prints it: JSON, non-ASCII characters as they are."""
    if isinstance(value, Hidden):
        return "(hidden)"
    return _cut(json.dumps(value, ensure_ascii=False, default=str))


def _cut(text: str) -> str:
    """A long value or name cut short in the report (a pasted 5 MB word stays readable)."""
    return text if len(text) <= 300 else f"{text[:200]}… ({len(text)} characters)"


@dataclass
class Line:
    """What became of one option of the source."""

    option: str
    status: str
    where: str = ""  # "[section] key" for a mapped option
    why: str = ""
    value: Any = None
    suggestion: str = ""  # an unknown option: the known one it most likely means

    def text(self) -> str:
        shown = f" = {_shown(self.value)}" if self.value is not None \
            and self.status != OFF else ""
        option = _cut(self.option)
        if self.status == MAPPED:
            return f"  {option}{shown} -> {self.where}" + (f" ({self.why})"
                                                                 if self.why else "")
        return f"  {option}{shown}: {self.why}" if self.why else f"  {option}{shown}"


@dataclass
class Mapped:
    """The profile's data (TOML-ready) and the account of every option."""

    data: dict[str, Any] = field(default_factory=lambda: {"profile_version": PROFILE_VERSION})
    lines: list[Line] = field(default_factory=list)

    def set(self, section: str, key: str, value: Any, option: str, why: str = "") -> None:
        """Set the field and say so; a field an earlier option set to another value is
        overridden (the later one wins, as on sd-scripts' command line), and that earlier
        line says so: no value reported as mapped is silently replaced."""
        where = f"[{section}] {key}"
        old = self.data.get(section, {}).get(key)
        merged = isinstance(old, list) and isinstance(value, list) and \
            value[:len(old)] == old  # network_args and the like: added to
        if key in self.data.get(section, {}) and old != value and not merged:
            for line in self.lines:
                if line.status == MAPPED and line.where == where:
                    line.status = NO_EFFECT
                    line.why = (f"overridden: the later {option} sets {where} to "
                                f"{_shown(value)}, and the later one wins")
        self.data.setdefault(section, {})[key] = value
        self.lines.append(Line(option, MAPPED, where, why, value))

    def has(self, section: str, key: str) -> bool:
        return key in self.data.get(section, {})

    def note(self, option: str, status: str, why: str, value: Any = None) -> None:
        self.lines.append(Line(option, status, why=why, value=value))


# lora-train's own fields, which no sd-scripts option means: an imported key of that name
# is reported as unknown, never mapped (its [notify] `command` / `on` would be a guess).
OWN_FIELDS = frozenset({("training", "early_stopping_patience"),
                        *(("notify", f.name) for f in dataclasses.fields(SECTIONS["notify"]))})
_FIELD_NAMES = {f.name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
                if (name, f.name) not in OWN_FIELDS}


def field_name(option: str) -> str | None:
    """The profile field an sd-scripts option sets (its own name or an alias), or None. An
    abbreviation on a command line is read with sd-scripts' own option list before
    (``sd_scripts_args.resolve``, as its argument parser does); in a file, where
    sd-scripts takes no abbreviation, it is not a field."""
    option = option.strip().lstrip("-").replace("-", "_")
    if option in _FIELD_NAMES:
        return option
    return ALIASES.get(option)


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


# sd-scripts' older optimizer switches (it still defines them): the optimizer they choose.
OPTIMIZER_SWITCHES = {"use_8bit_adam": "AdamW8bit", "use_lion_optimizer": "Lion"}


def _optimizer_switches(options: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``--use_8bit_adam`` / ``--use_lion_optimizer`` as the optimizer_type they mean;
    LoraError where sd-scripts refuses them (with each other, or with --optimizer_type)."""
    from lora_core.errors import LoraError

    on = [name for name, value in options if name in OPTIMIZER_SWITCHES
          and plain(value) not in (False, *UNSET)]
    typed = [plain(v) for n, v in options if n in ("optimizer_type", "optimizer")
             and plain(v) not in UNSET]
    if on and (len(on) > 1 or typed):
        other = on[1] if len(on) > 1 else f"optimizer_type {typed[-1]}"
        raise LoraError(f"the source sets both {on[0]} and {other}, which sd-scripts "
                        "refuses together", "keep one of them")
    return options


def _text_encoder_lr(raw: Any) -> Any:
    """One rate, or two (SDXL's encoders, as sd-scripts' ``--text_encoder_lr A B``) as a
    list; two equal rates are one."""
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = json.loads(raw)
        except ValueError:
            return plain(raw)
    if not isinstance(raw, (list, tuple)):
        return plain(raw)
    values = [plain(v) for v in raw if plain(v) not in UNSET]
    if not values:
        return None
    if len(set(values)) == 1:
        return values[0]
    return values


def map_options(options: list[tuple[str, Any]], mapped: Mapped | None = None) -> Mapped:
    """Put each ``(option, value)`` (sd-scripts' names) where it belongs; later options win
    over earlier ones, as on sd-scripts' command line."""
    mapped = mapped or Mapped()
    for option, raw in _optimizer_switches(options):
        name = option.strip().lstrip("-").replace("-", "_")
        value = plain(raw)
        if name == "text_encoder_lr":
            value = _text_encoder_lr(raw)
        if name in OPTIMIZER_SWITCHES:
            if value in (False, *UNSET):
                mapped.note(name, OFF, "off in the source", value)
            else:
                mapped.set("optimizer", "optimizer_type", OPTIMIZER_SWITCHES[name], name,
                           f"sd-scripts' --{name} means {OPTIMIZER_SWITCHES[name]}")
            continue
        if name in SECRET_OPTIONS:
            if value in UNSET:
                mapped.note(name, OFF, "empty in the source")
            elif name == "wandb_api_key":
                mapped.note(name, NO_EFFECT, "a secret, never written into a profile: "
                            "lora-train takes it from the environment (set WANDB_API_KEY)",
                            HIDDEN)
            else:
                mapped.note(name, NOT_SUPPORTED, "an sd-scripts option (the token for its "
                            "Hugging Face upload, which lora-train does not do); a secret, "
                            "never written into a profile", HIDDEN)
            continue
        key = field_name(name)
        if key is None:
            _not_a_field(mapped, name, value)
            continue
        if value in UNSET:
            mapped.note(name, OFF, "not set in the source: the default is kept")
            continue
        if key == "text_encoder_lr" and isinstance(value, list):
            mapped.set("optimizer", key, value, name, "one rate per text encoder (SDXL's "
                       "two), as sd-scripts reads two values")
            continue
        section = owner_section(key)
        assert section is not None
        if isinstance(raw, str) and _is_text(section, key):
            value = raw.strip()  # a path or a name stays as written ("0001" too)
        if key in ("optimizer_args", "network_args", "lr_scheduler_args"):
            value = args_list(raw)
            if not value:
                continue
            value = mapped.data.get(section, {}).get(key, []) + value
        elif isinstance(raw, (list, tuple)) and key != "resolution" and \
                not all(isinstance(v, str) for v in _field_parts(section, key)):
            value = [plain(v) for v in raw]  # a list of numbers, written as text
        elif key == "resolution" and isinstance(raw, (list, tuple)):
            value = ",".join(str(plain(v)) for v in raw)
        elif key == "lr_warmup_steps" and name == "lr_warmup":
            value = float(value) / 100  # kohya_ss: a percentage of all steps
        why = "" if key == name else f"sd-scripts' {key}"
        if key == "network_module" and value == FLUX_NETWORK_MODULE:
            # one LoRA for Flux models: the base model's family picks the module names
            value, why = "LoRA", f"sd-scripts' {FLUX_NETWORK_MODULE}: LoRA on a Flux model"
        mapped.set(section, key, value, name, why)
    return mapped


def _field_parts(section: str, key: str) -> list[Any]:
    """What a list field holds: [""] for a list of strings, [0.0] for numbers."""
    import typing

    hint = typing.get_type_hints(SECTIONS[section])[key]
    parts = typing.get_args(hint) if typing.get_origin(hint) is not list else ()
    for part in (*parts, hint):
        if typing.get_origin(part) is list:
            return ["" if typing.get_args(part)[0] is str else 0.0]
    return [""]


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
    elif name in NOT_YET_KEYS or any_script_option(name):
        mapped.note(name, NOT_SUPPORTED, "an sd-scripts option this version does not "
                    "support yet; the run goes without it", value)
    else:
        from lora_core.errors import closest

        guess = closest(name, sorted(_KNOWN_NAMES)) if len(name) < 100 else None
        mapped.note(name, UNKNOWN, "not an option lora-train knows; left out" + (
            f": did you mean `--{guess}`?" if guess else ""), value)
        mapped.lines[-1].suggestion = guess or ""


_KNOWN_NAMES = (_FIELD_NAMES | set(ALIASES) | set(NOT_YET_KEYS) | set(HARMLESS_KEYS)
                | set(OPTIMIZER_SWITCHES)) - {"epoch", "optimizer", "dropout"}
