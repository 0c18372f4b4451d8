"""Typed setting values, and the one engine that turns written values into them.

Settings arrive in three forms: TOML values (profiles, ``--set`` overrides), JSON/TOML values
of sd-scripts' dataset configs, and the text typed into the wizard. Each field declares a
Python type hint (``int``, ``float | None``, ``list[str]``, ``tuple[float, float]``,
:class:`Resolution`, ...), and :func:`coerce` is the only place that decides whether a value
fits it, for all three. :func:`parse_text` turns wizard text into the value a profile file
would hold, then the same :func:`coerce` judges it.

Rules (TOML's and voluptuous' both): an integer is accepted where a number is expected, a
boolean never is; ``list[str]`` also takes one string of shell-quoted words
(``"weight_decay=0.05 betas=0.9,0.99"``, the form sd-scripts' command line and the kohya_ss
GUI use for optimizer_args and network_args). Pure Python; no torch.
"""

from __future__ import annotations

import shlex
import tomllib
import types
import typing
from typing import Any, NamedTuple


class Resolution(NamedTuple):
    """A training resolution in pixels. Written ``512`` (square) or ``"768,512"`` (W,H) in
    a profile, ``512`` or ``[768, 512]`` in a dataset config."""

    width: int
    height: int

    @classmethod
    def parse(cls, value: Any) -> Resolution | None:
        """The resolution ``value`` writes, or None when it is not one."""
        if isinstance(value, Resolution):
            return value
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return cls(value, value) if value > 0 else None
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                       and v > 0 for v in value):
                return cls(value[0], value[1])
            return None
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) in (1, 2) and all(p.isdigit() for p in parts):
                width, height = int(parts[0]), int(parts[-1])
                return cls(width, height) if width > 0 and height > 0 else None
        return None

    def to_toml(self) -> int | str:
        """How a profile file writes it: one number when square, else "W,H"."""
        return self.width if self.width == self.height else f"{self.width},{self.height}"

    def __str__(self) -> str:
        return str(self.to_toml())


def type_parts(hint: Any) -> tuple[list[Any], bool]:
    """The types a hint allows (None left out), and whether None is allowed."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = list(typing.get_args(hint))
    else:
        args = [hint]
    return [a for a in args if a is not type(None)], type(None) in args


def is_string_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list


def coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, the value as ``hint``'s type) when ``value`` fits, else (False, value)."""
    parts, optional = type_parts(hint)
    if value is None:
        return optional, None
    for part in parts:
        ok, converted = _coerce_part(value, part)
        if ok:
            return True, converted
    return False, value


def _coerce_part(value: Any, part: Any) -> tuple[bool, Any]:
    if part is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value  # never a number, a string or a resolution
    if part is int:
        return isinstance(value, int), value
    if part is float:
        return (True, float(value)) if isinstance(value, (int, float)) else (False, value)
    if part is Resolution:
        parsed = Resolution.parse(value)
        return parsed is not None, parsed if parsed is not None else value
    if part in (str, dict):
        return isinstance(value, part), value
    origin = typing.get_origin(part)
    if origin is list and typing.get_args(part) == (float,):
        # A list of numbers (base_weights_multiplier); one number is a list of one.
        items = value if isinstance(value, (list, tuple)) else [value]
        converted = [coerce(v, float) for v in items]
        if all(ok for ok, _ in converted):
            return True, [v for _, v in converted]
        return False, value
    if origin is list:
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError:  # an unclosed quote
                return False, value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return True, list(value)
        return False, value
    if origin is tuple:
        members = typing.get_args(part)
        if isinstance(value, (list, tuple)) and len(value) == len(members):
            converted = [coerce(v, m) for v, m in zip(value, members, strict=True)]
            if all(ok for ok, _ in converted):
                return True, tuple(v for _, v in converted)
        return False, value
    return False, value


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          dict: "a table",
          Resolution: "a resolution: one number like 512, or \"W,H\" like \"768,512\""}


def describe_type(hint: Any) -> str:
    """The type in words, for messages ("an integer or a number")."""
    parts, _ = type_parts(hint)
    words = []
    for part in parts:
        if part in _NAMES:
            words.append(_NAMES[part])
        elif typing.get_origin(part) is list:
            words.append("a list of numbers" if typing.get_args(part) == (float,)
                         else "a list of strings")
        elif typing.get_origin(part) is tuple:
            words.append(f"a list of {len(typing.get_args(part))} numbers")
        else:
            words.append(getattr(part, "__name__", str(part)))
    return " or ".join(words)


def format_value(value: Any) -> str:
    """A value as a profile file spells it (TOML): "text", true, 1e-4, ["a", "b"]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Resolution):
        return format_value(value.to_toml())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if value is None:
        return "(unset)"
    return str(value)


def parse_text(text: str, hint: Any) -> Any:
    """The value typed ``text`` stands for (None when it is empty): a TOML literal for
    numbers, booleans and lists, the text itself for strings and resolutions. Text that
    does not parse is returned as it is, so :func:`coerce` names the problem."""
    stripped = text.strip()
    if stripped == "":
        return None
    parts, _ = type_parts(hint)
    if str in parts and not any(p in (int, float) for p in parts):
        return text
    if Resolution in parts:
        return stripped
    if bool in parts:
        return {"true": True, "false": False}.get(stripped.lower(), stripped)
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        return stripped
