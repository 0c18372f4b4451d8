"""Reading and writing profile TOML files, and command-line overrides.

Loads with tomllib, saves with tomli-w, writes atomically. Relative paths in a profile are
relative to the folder the profile file is in, so a profile works from any working directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from lora_core.errors import ProfileError
from lora_core.profile import SECTIONS, Profile, profile_from_dict, profile_to_dict
from lora_core.saving.atomic import atomic_write_bytes


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


def _encoding_clue(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where decoding failed, in words: the line, or the UTF-16 byte-order mark that Windows
    editors write for "Unicode"."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it is UTF-16, as Windows editors save \"Unicode\" text"
    line = data[:exc.start].count(b"\n") + 1
    return f"byte 0x{data[exc.start]:02x} on line {line}"


def load_profile(path: Path, overrides: list[str] | None = None) -> Profile:
    path = Path(path)
    data = read_profile_dict(path)
    apply_overrides(data, overrides or [])
    return profile_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, value); value read as TOML, else a string."""
    target, sep, raw = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise ProfileError(f"--set {item!r} is not of the form section.key=value",
                           "for example: --set network.network_dim=16")
    if section not in SECTIONS:
        from lora_core.profile import closest
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
    atomic_write_bytes(Path(path), dumps_profile(profile).encode("utf-8"))


def absolute_profile(profile: Profile) -> Profile:
    """A copy whose path fields are absolute, for snapshots stored away from the original."""
    import dataclasses

    data = profile_to_dict(profile)
    for sec_name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata["path"]:
                resolved = profile.path(sec_name, f.name)
                if resolved is not None:
                    data[sec_name][f.name] = str(resolved)
    return profile_from_dict(data, base_dir=profile.base_dir)
