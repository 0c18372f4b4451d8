"""`lora-train import SOURCE`: settings users already have, as a profile.

SOURCE is a file, or text (a pasted command line; ``-`` reads standard input). Its form is
detected: a LoRA ``.safetensors`` (its metadata), a JSON (kohya_ss GUI or LETS popup era), a
TOML (this project's own profile, a LETS configuration, sd-scripts' ``--config_file``, or a
``dataset_config`` alone) or a command line. The result is the profile's data, a line for
every option of the source (mapped to which field, no effect here and why, not supported)
and the problems reading it as a profile finds (paths from another machine are kept as
written: ``check`` names them).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.checks.problem import Problem
from lora_core.errors import LoraError
from lora_core.importing.mapping import (
    MAPPED,
    NO_EFFECT,
    NOT_SUPPORTED,
    OFF,
    UNKNOWN,
    Mapped,
    apply_sd_scripts_defaults,
)
from lora_core.importing.mapping import map_options as map_options
from lora_core.importing.sources import (
    detect_json,
    flatten,
    read_command_line,
    read_kohya_gui_json,
    read_lets_json,
    read_lets_toml,
    subsets_dataset,
)

FORM_NAMES = {"command": "an sd-scripts command line", "sd-scripts-toml":
              "an sd-scripts --config_file TOML", "lets-toml": "a LoRA Easy Training Scripts "
              "TOML", "lets-json": "a LoRA Easy Training Scripts JSON (popup era)",
              "kohya_ss": "a kohya_ss GUI JSON", "lora": "a LoRA file's metadata",
              "dataset-config": "an sd-scripts dataset_config TOML", "profile":
              "a lora-train profile"}


@dataclass
class ImportResult:
    form: str
    data: dict[str, Any]
    mapped: Mapped
    problems: list[Problem] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"Read as {FORM_NAMES[self.form]}.", ""]
        for status, title in ((MAPPED, "Mapped"), (NO_EFFECT, "No effect here"),
                              (NOT_SUPPORTED, "Not supported (left out)"),
                              (UNKNOWN, "Unknown (left out)"), (OFF, "Off or empty in the "
                                                                "source")):
            chosen = [line for line in self.mapped.lines if line.status == status]
            if chosen:
                lines += [f"{title} ({len(chosen)}):", *[line.text() for line in chosen], ""]
        if self.problems:
            lines.append(f"To fix before training ({len(self.problems)}; `lora-train check` "
                         "shows them again):")
            lines += [f"  - {p.text()}" for p in self.problems]
        return "\n".join(lines).rstrip() + "\n"


def import_source(source: str | Path, text: str | None = None) -> ImportResult:
    """Import ``source`` (a path), or ``text`` when given (a pasted command, stdin)."""
    mapped = Mapped()
    if text is None:
        path = Path(source)
        if not path.is_file():
            raise LoraError(f"file not found: {path}", "give a command line file, a TOML or "
                            "JSON settings file, or a LoRA .safetensors file")
        if path.suffix.lower() == ".safetensors":
            from lora_core.importing.lora_metadata import read_lora_metadata

            options = read_lora_metadata(path, mapped)
            return _finish("lora", options, mapped)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise LoraError(f"{path} is not a text file", "give a command line file, a TOML "
                            "or JSON settings file, or a LoRA .safetensors file") from None
        suffix = path.suffix.lower()
    else:
        suffix = ""
    stripped = text.strip()
    if not stripped:
        raise LoraError(f"{source} is empty", "give the settings to import")
    if suffix == ".json" or (not suffix and stripped.startswith("{")):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise LoraError(f"{source} is not valid JSON ({exc})", "check the file") from None
        form = detect_json(data)
        reader = read_kohya_gui_json if form == "kohya_ss" else read_lets_json
        return _finish(form, reader(data, mapped), mapped)
    if suffix not in (".sh", ".bat", ".cmd", ".ps1", ".txt"):
        try:  # a TOML file, or text that reads as TOML (a command line does not)
            return _from_toml(source, tomllib.loads(stripped), mapped)
        except tomllib.TOMLDecodeError as exc:
            if suffix == ".toml":
                raise LoraError(f"{source} is not valid TOML ({exc})",
                                "check the file") from None
    return _finish("command", read_command_line(text, mapped), mapped)


def _from_toml(source: Any, data: dict, mapped: Mapped) -> ImportResult:
    if "profile_version" in data:
        raise LoraError(f"{source} is a lora-train profile already",
                        "open it as it is: `lora-tui PROFILE` or `lora-train check PROFILE`")
    if "datasets" in data and "pretrained_model_name_or_path" not in json.dumps(data):
        mapped.note("dataset_config", MAPPED, "this file is a dataset_config: the profile "
                    "points at it; answer the other settings in the wizard")
        mapped.lines[-1].where = "[dataset] dataset_config"
        return _finish("dataset-config", [("dataset_config", str(source))], mapped)
    if "subsets" in data or any(isinstance(v, dict) and ("args" in v or "dataset_args" in v)
                                for v in data.values()):
        options, subsets = read_lets_toml(data, mapped)
        return _finish("lets-toml", subsets_dataset(subsets, mapped) + options, mapped)
    return _finish("sd-scripts-toml", flatten(data), mapped)


def _finish(form: str, options: list[tuple[str, Any]], mapped: Mapped) -> ImportResult:
    from lora_core.profile import SECTIONS
    from lora_core.profile_load import read_profile

    map_options(options, mapped)
    if form in ("command", "sd-scripts-toml"):
        apply_sd_scripts_defaults(mapped)
    net = mapped.data.get("network", {})
    args = [str(a).partition("=")[0].strip() for a in net.get("network_args", [])]
    if "network_module" not in net and "algo" in args:
        mapped.set("network", "network_module", "lycoris.kohya", "network_args algo",
                   "LyCORIS' module, which algo= selects the type of")
    elif "network_module" not in net and "conv_dim" in args:
        mapped.set("network", "network_module", "networks.lora", "network_args conv_dim",
                   "sd-scripts' LoRA module, with 3x3 convolutions: LoCon")
    data = {"profile_version": mapped.data["profile_version"],
            **{name: mapped.data[name] for name in SECTIONS if name in mapped.data}}
    mapped.data = data
    _, problems = read_profile(data, Path.cwd())
    return ImportResult(form, data, mapped, [p for p in problems if p.severity == "error"])
