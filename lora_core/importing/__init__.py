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
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.checks.problem import Problem
from lora_core.errors import LoraError
from lora_core.importing.command_line import read_command_line
from lora_core.importing.kohya_gui import read_kohya_gui_json
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
    read_lets_json,
    read_lets_toml,
    subsets_dataset,
)

# A settings source is a page of text; anything larger is something else (and splitting a
# 50 MB "command" into words takes minutes).
MAX_SOURCE_BYTES = 10 * 1024 * 1024
# The file name the profile's dataset_config gets when the import writes one beside it.
DATASET_CONFIG_NAME = "dataset_config.toml"

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
    # sd-scripts' dataset_config the profile points at (LETS subsets), to be written beside
    # the profile (``write_beside``); None when the import needs none.
    dataset_config: dict[str, Any] | None = None
    # Where write_beside / write_dataset_config wrote it (None: not written yet).
    dataset_config_written: Path | None = None

    def write_beside(self, profile_path: Path) -> list[Path]:
        """Write the files the profile refers to beside ``profile_path`` (the dataset_config
        as ``<profile name>.dataset.toml``) and point the profile's data at them; existing
        files are refused, never replaced."""
        if self.dataset_config is None:
            return []
        path = Path(profile_path).with_name(Path(profile_path).stem + ".dataset.toml")
        self.write_dataset_config(path)
        self._point_at(path.name)
        return [path]

    def write_dataset_config(self, path: Path) -> None:
        """Write the dataset_config to ``path`` (never over an existing file) and point the
        profile's data at it by that path."""
        import tomli_w

        from lora_core.atomic import atomic_write

        assert self.dataset_config is not None
        if path.exists():
            raise LoraError(f"{path} exists already", "choose another profile name; an "
                            "import never replaces a file")
        text = tomli_w.dumps(self.dataset_config)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), exclusive=True)
        self._point_at(str(path))
        self.dataset_config_written = path

    def _point_at(self, name: str) -> None:
        """The profile's dataset_config, and the report's line for it, name ``name``: the
        file actually written."""
        self.data.setdefault("dataset", {})["dataset_config"] = name
        for line in self.mapped.lines:
            if line.where == "[dataset] dataset_config" and line.option == "dataset_config":
                line.value = name

    def render(self) -> str:
        lines = [f"Read as {FORM_NAMES[self.form]}.", ""]
        for status, title in ((MAPPED, "Mapped"), (NO_EFFECT, "No effect here"),
                              (NOT_SUPPORTED, "Not supported (left out)"),
                              (UNKNOWN, "Unknown (left out)"), (OFF, "Off or empty in the "
                                                                "source")):
            chosen = [line for line in self.mapped.lines if line.status == status]
            if chosen:
                lines += [f"{title} ({len(chosen)}):", *[line.text() for line in chosen], ""]
        if self.dataset_config is not None and self.dataset_config_written is not None:
            lines += [f"The dataset_config the profile points at: written as "
                      f"{self.dataset_config_written}.", ""]
        elif self.dataset_config is not None:
            import tomli_w

            lines += ["The dataset_config the profile points at (`-o PROFILE` writes it beside "
                      "the profile as PROFILE-NAME.dataset.toml; else save it as "
                      f"{DATASET_CONFIG_NAME} beside the profile):", "",
                      tomli_w.dumps(self.dataset_config)]
        if self.problems:
            lines.append(f"To fix before training ({len(self.problems)}; `lora-train check` "
                         "shows them again):")
            lines += [f"  - {p.text()}" for p in self.problems]
        return "\n".join(lines).rstrip() + "\n"


def import_source(source: str | Path, text: str | None = None) -> ImportResult:
    """Import ``source`` (a path), or ``text`` when given (a pasted command, stdin)."""
    mapped = Mapped()
    base = None
    if text is None:
        path = Path(source)
        if not path.is_file():
            raise LoraError(f"file not found: {path}", "give a command line file, a TOML or "
                            "JSON settings file, or a LoRA .safetensors file")
        if path.suffix.lower() == ".safetensors":
            from lora_core.importing.lora_metadata import read_lora_metadata

            options = read_lora_metadata(path, mapped)
            return _finish("lora", options, mapped)
        _refuse_size(str(path), path.stat().st_size)
        text = decode(path.read_bytes(), str(path))
        suffix = path.suffix.lower()
        base = path.resolve().parent
    else:
        _refuse_size(str(source), len(text))
        suffix = ""
    stripped = text.strip()
    if not stripped:
        raise LoraError(f"{source} is empty", "give the settings to import")
    if suffix == ".json" or (not suffix and stripped.startswith("{")):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise LoraError(f"{source} is not valid JSON ({exc})", "check the file") from None
        except RecursionError:
            raise LoraError(f"{source} is nested too deeply to be a settings file",
                            "give a kohya_ss or LoRA Easy Training Scripts JSON") from None
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
        except RecursionError:
            raise LoraError(f"{source} is nested too deeply to be a settings file",
                            "give an sd-scripts, LoRA Easy Training Scripts or lora-train "
                            "TOML") from None
    return _finish("command", read_command_line(text, mapped, base, suffix), mapped)


def _refuse_size(source: str, size: int) -> None:
    if size > MAX_SOURCE_BYTES:
        raise LoraError(f"{source} is {size / 1024 / 1024:.1f} MB: far too large for a "
                        "settings file or a command (at most 10 MB)",
                        "give the command, the TOML or JSON settings file, or the LoRA "
                        ".safetensors file itself")


def decode(raw: bytes, source: str) -> str:
    """A settings file's text: UTF-8 (with or without a BOM), UTF-16 (with its BOM, as
    Windows' Notepad and PowerShell write it, or without one: told by its NUL bytes) or
    Shift-JIS (Japanese Windows' ANSI) when it reads as Japanese (``_plausibly_japanese``).
    Anything else (a Western Windows ANSI file, cp1252, decodes as Shift-JIS into wrong
    kanji) is refused naming the encodings tried, never guessed."""
    utf16 = _utf16_without_bom(raw)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or utf16:
        try:
            text = raw.decode(utf16 or "utf-16")
        except UnicodeDecodeError:
            text = "\x00"
        if "\x00" not in text:
            return text
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = "\x00"
        if "\x00" not in text:
            return text
        try:
            text = raw.decode("cp932")
        except UnicodeDecodeError:
            text = "\x00"
        if "\x00" not in text and _plausibly_japanese(text):
            return text
        if "\x00" not in text:
            odd = "".join(sorted({c for c in text if ord(c) > 127}))[:12]
            raise LoraError(f"{source} is neither UTF-8 nor UTF-16 text, and read as "
                            f"Shift-JIS it gives no Japanese text, only stray characters "
                            f"({odd!r}): tried UTF-8, UTF-16 and Shift-JIS (cp932); it is "
                            "likely in a Windows ANSI code page such as cp1252 (Western)",
                            "save it as UTF-8 (Notepad: Save as, Encoding: UTF-8) and import "
                            "it again; lora-train does not guess an ANSI code page")
    raise LoraError(f"{source} is not text in UTF-8, UTF-16 or Shift-JIS (it may be a binary "
                    "file)", "save it as UTF-8 text, or give a command line file, a TOML or "
                    "JSON settings file, or a LoRA .safetensors file")


def _utf16_without_bom(raw: bytes) -> str:
    """"utf-16-le" / "utf-16-be" when ``raw`` has UTF-16's NUL pattern without a BOM (ASCII
    text in UTF-16 has a NUL in every other byte; UTF-8 and Shift-JIS text has none)."""
    if len(raw) < 4 or len(raw) % 2 or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return ""
    even, odd = raw[0::2], raw[1::2]
    for zeros, other, name in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= len(zeros) * 0.3 and other.count(0) <= len(other) * 0.02:
            return name
    return ""


_KANA = re.compile(r"[\u3041-\u3096\u30a1-\u30fa\u30fc]")
_JAPANESE = re.compile(r"[\u3000-\u303f\u3041-\u3096\u309b-\u309e\u30a1-\u30fe"
                       r"\u4e00-\u9fff\uff01-\uff5e]")


def _plausibly_japanese(text: str) -> bool:
    """Shift-JIS-decoded text that is Japanese, not another code page misread: every
    character beyond ASCII is Japanese (kana, kanji, Japanese punctuation, full-width
    forms; no half-width katakana or user-defined characters, which cp1252's accented
    letters turn into) and there is kana, or the kanji are all JIS level 1 (lead bytes up to
    0x9f; cp1252's à-ü are level-2 lead bytes: "José\\" reads as "Jos饅")."""
    wide = [c for c in text if ord(c) > 127]
    if not wide or not all(_JAPANESE.match(c) for c in wide):
        return False
    return bool(_KANA.search(text)) or all(c.encode("cp932")[0] <= 0x9F for c in wide)


def _from_toml(source: Any, data: dict, mapped: Mapped) -> ImportResult:
    if "profile_version" in data:
        raise LoraError(f"{source} is a lora-train profile already",
                        "open it as it is: `lora-tui PROFILE` or `lora-train check PROFILE`")
    if isinstance(data.get("accelerate_launch"), dict) and ({"model", "folders", "basic",
                                                             "configuration"} & set(data)):
        raise LoraError(f"{source} is the kohya_ss GUI's defaults file (its `config example."
                        "toml` / `config.toml`): it sets the values the GUI's fields start "
                        "with, not the settings of a training",
                        "save the training's settings from kohya_ss (Configuration > Save, a "
                        ".json) and import that, or import the command it prints")
    if "datasets" in data and "pretrained_model_name_or_path" not in json.dumps(data):
        mapped.note("dataset_config", MAPPED, "this file is a dataset_config: the profile "
                    "points at it; answer the other settings in the wizard")
        mapped.lines[-1].where = "[dataset] dataset_config"
        return _finish("dataset-config", [("dataset_config", str(source))], mapped)
    if "subsets" in data or any(isinstance(v, dict) and ("args" in v or "dataset_args" in v)
                                for v in data.values()):
        options, subsets = read_lets_toml(data, mapped)
        config = subsets_dataset(subsets, mapped)
        if config is not None:
            options = [("dataset_config", DATASET_CONFIG_NAME)] + options
        result = _finish("lets-toml", options, mapped)
        result.dataset_config = config
        return result
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
