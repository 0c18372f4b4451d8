"""Single-field checks: a profile table's keys and values against the fields' declarations.

Each field is declared in ``lora_core.profile`` with :func:`~lora_core.profile.setting`
(type, range, choices); :func:`read_section` builds a section from a TOML table, keeping every
value that fits and reporting every one that does not (unknown key with the closest valid
one, wrong type, out of range, not a choice). The type is judged by ``values.coerce``, the
same engine the dataset config and the wizard use. Pure Python.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from lora_core.checks.problem import Problem, error
from lora_core.errors import closest
from lora_core.profile import HARMLESS_KEYS, NOT_YET_KEYS, SECRET_KEYS, SECTIONS
from lora_core.training.optimizer_args import is_import_path
from lora_core.values import Resolution, coerce, describe_type, format_value

FIELDS_HINT = ("fix the fields named above; `lora-train fields` lists every field with its "
               "allowed values")


def owner_section(key: str) -> str | None:
    """The section that has a field named ``key``."""
    return next((name for name, cls in SECTIONS.items()
                 if key in {f.name for f in dataclasses.fields(cls)}), None)


def value_problem(where: str, value: Any, meta: dict) -> str | None:
    """Why ``value`` (already of the right type) is not allowed by the field's choices or
    range, or None. ``where`` names the field in the message."""
    choices = meta["choices"]
    if choices is not None and isinstance(value, str):
        if value.lower() in {c.lower() for c in choices}:
            return None
        if meta.get("or_import_path"):
            if is_import_path(value):
                return None
            return (f"{where} = {format_value(value)} is not one of the choices "
                    f"({', '.join(choices)}) nor an import path like \"torch.optim.RAdam\"")
        return f"{where} = {format_value(value)} is not one of the choices: {', '.join(choices)}"
    if isinstance(value, tuple) and not isinstance(value, Resolution):  # [a, b]: each one
        return next(filter(None, (value_problem(f"{where}[{i}]", v, meta)
                                  for i, v in enumerate(value))), None)
    if isinstance(value, float) and not math.isfinite(value):
        # TOML has inf and nan; no setting means them (lr = inf trains NaNs from step 1).
        return f"{where} = {value} is not a finite number: give an ordinary number"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta["min"], meta["max"]
        if (low is None or value >= low) and (high is None or value <= high):
            return None
        if low is not None and high is not None:
            allowed = f"between {format_value(low)} and {format_value(high)}"
        else:
            allowed = f"at least {format_value(low)}" if low is not None \
                else f"at most {format_value(high)}"
        return f"{where} = {format_value(value)} is out of range: it must be {allowed}"
    return None


def canonical_choice(value: Any, meta: dict) -> Any:
    """A choice as declared ("adamw8bit" -> "AdamW8bit"); other values unchanged."""
    if meta["choices"] and isinstance(value, str):
        return {c.lower(): c for c in meta["choices"]}.get(value.lower(), value)
    return value


def unknown_key(section: str | None, key: str, candidates: list[str]) -> Problem:
    where = f"[{section}] {key}" if section else key
    spot = {"section": section, "key": key}
    if key == "resume":
        return error(f"`{where}`: a profile does not say where to resume from; remove it and "
                     "run `lora-train resume RUN_FOLDER` (the run folder the run printed at its "
                     "start; `lora-train status` lists them)", **spot)
    if key in SECRET_KEYS:
        return error(f"`{where}` is not read from a profile: {SECRET_KEYS[key]}", **spot)
    if key in NOT_YET_KEYS:
        return error(f"`{where}` is not supported yet by this version of lora-train; "
                     "remove it from the profile", **spot)
    guess = closest(key, candidates)
    if guess:
        return error(f"`{where}`: unknown key; did you mean `{guess}`?", **spot)
    owner = owner_section(key)
    if owner:
        return error(f"`{where}`: this key belongs in the [{owner}] section", **spot)
    return error(f"`{where}`: unknown key", **spot)


def harmless_key(section: str | None, key: str) -> Problem:
    """An sd-scripts option that changes nothing here: accepted, with a note saying why."""
    where = f"[{section}] {key}" if section else key
    return Problem(f"`{where}` has no effect in lora-train: {HARMLESS_KEYS[key]}",
                   "you may remove it", "warning", section, key)


def read_section(name: str, cls: type, data: Any, problems: list[Problem]) -> Any:
    """The section ``name`` built from a TOML table; every value that does not fit is left
    at its default and reported in ``problems``."""
    if not isinstance(data, dict):
        problems.append(error(f"`[{name}]` must be a table of settings, not "
                              f"{format_value(data)}", section=name))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            if key in HARMLESS_KEYS:
                problems.append(harmless_key(name, key))
            else:
                problems.append(unknown_key(name, key, list(fields)))
            continue
        where = f"`[{name}] {key}`"
        ok, coerced = coerce(value, hints[key])
        if not ok:
            problems.append(error(f"{where} = {format_value(value)} has the wrong type: it must "
                                  f"be {describe_type(hints[key])}", section=name, key=key))
            continue
        meta = fields[key].metadata
        problem = value_problem(where, coerced, meta)
        if problem:
            problems.append(error(problem, section=name, key=key))
            continue
        kwargs[key] = canonical_choice(coerced, meta)
    return cls(**kwargs)
