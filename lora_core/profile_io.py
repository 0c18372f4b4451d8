"""Profile TOML files as data: reading them, ``--set`` overrides, writing them.

Reads with tomllib, saves with tomli-w, writes atomically. Turning the data into a checked
profile is ``profile_load``'s job (``load_profile``); this module knows TOML, not the rules.
Relative paths in a profile are relative to the folder the profile file is in, so a profile
works from any working directory; a loaded profile holds them absolute, so one saved from it
(a run folder's record) runs from anywhere too. A file a person edits is saved from its data
(:func:`save_profile_data`), keeping paths as they were written.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from lora_core.atomic import atomic_write_bytes
from lora_core.errors import ProfileError, closest
from lora_core.profile import SECTIONS, Profile, profile_to_dict


def read_profile_dict(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.toml"))[:3]
        raise ProfileError(f"the profile {path} is a folder, not a file",
                           "give the .toml profile file itself"
                           + (f", e.g. one of: {', '.join(inside)}" if inside else ""))
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}",
                           "check the path; `lora-train run` takes a .toml profile file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read the profile {path}: {exc.strerror}",
                           "check that the file is readable") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path} is not UTF-8 text ({_encoding_clue(data, exc)})",
                           "save the profile as UTF-8 (in Notepad: Save as, Encoding UTF-8)"
                           ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}",
                           "fix the syntax at the line and column named above") from None
    except RecursionError:
        raise ProfileError(f"{path} is nested too deeply to be a profile",
                           "a profile is a few [sections] of plain values") from None


def _encoding_clue(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where decoding failed, in words: the line, or the UTF-16 byte-order mark that Windows
    editors write for "Unicode"."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it is UTF-16, as Windows editors save \"Unicode\" text"
    line = data[:exc.start].count(b"\n") + 1
    return f"byte 0x{data[exc.start]:02x} on line {line}"


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, value); value read as TOML, else a string."""
    target, sep, raw = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise ProfileError(f"--set {item!r} is not of the form section.key=value",
                           "for example: --set network.network_dim=16")
    if section not in SECTIONS:
        guess = closest(section, list(SECTIONS))
        raise ProfileError(f"--set {item!r}: unknown section `{section}`"
                           + (f"; did you mean `{guess}`?" if guess else ""),
                           f"sections are: {', '.join(SECTIONS)}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        section, key, value = parse_override(item)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ProfileError(f"--set {item!r}: `{section}` in the profile is not a table")
        table[key] = value


def dumps_profile(profile: Profile) -> str:
    return tomli_w.dumps(profile_to_dict(profile))


def save_profile(profile: Profile, path: Path) -> None:
    """Write ``profile`` (paths absolute, as loaded) atomically."""
    atomic_write_bytes(Path(path), dumps_profile(profile).encode("utf-8"))


def save_profile_data(data: dict[str, Any], path: Path) -> None:
    """Write profile data (a dict as a file holds it: paths as written) atomically."""
    atomic_write_bytes(Path(path), tomli_w.dumps(data).encode("utf-8"))
