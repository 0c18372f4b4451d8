"""The profile reference page (docs/profile-reference.md), generated from the profile's own
field declarations so the documentation cannot drift from what the code accepts.

``lora-train fields --markdown`` prints it; a test fails when the committed page differs
from what this module generates. Pure Python; no torch.
"""

from __future__ import annotations

import dataclasses
import inspect

from lora_core.profile import NOT_YET_KEYS, SECRET_KEYS, SECTIONS, field_docs

REGENERATE = "lora-train fields --markdown > docs/profile-reference.md"


def _default_text(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, str):
        return f'`"{default}"`'
    if isinstance(default, list):
        return "`[" + ", ".join(f'"{v}"' for v in default) + "]`"
    return f"`{default}`"


def _range_text(meta: dict) -> str:
    lo, hi = meta["min"], meta["max"]
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f" Range: {lo:g} to {hi:g}."
    return f" At least {lo:g}." if lo is not None else f" At most {hi:g}."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    lines = [
        "# Profile reference",
        "",
        f"Generated from `lora_core/profile.py` by `{REGENERATE}`; do not edit by hand.",
        "",
        "A profile is a TOML file with the sections below. Keys use sd-scripts' argument "
        "names wherever the concept is the same, so values from sd-scripts configs and "
        "guides carry over. Relative paths are taken from the profile's folder. A key that is "
        "not listed here is an error that names the closest valid key.",
        "",
    ]
    docs = field_docs()
    meta = {(name, f.name): f.metadata for name, cls in SECTIONS.items()
            for f in dataclasses.fields(cls)}
    for section, cls in SECTIONS.items():
        lines += [f"## [{section}]", "", inspect.cleandoc(cls.__doc__ or ""), "",
                  "| Key | Type | Default | Meaning |", "|---|---|---|---|"]
        for sec, key, type_text, default, doc in docs:
            if sec == section:
                doc += _range_text(meta[(sec, key)])
                lines.append(f"| `{key}` | {_cell(type_text)} | {_cell(_default_text(default))}"
                             f" | {_cell(doc)} |")
        lines.append("")
    known = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    later = sorted(NOT_YET_KEYS - known)
    lines += ["## sd-scripts options not supported yet", "",
              "These are rejected with a message (never silently ignored):", "",
              ", ".join(f"`{k}`" for k in later), ""]
    lines += ["## sd-scripts options never read from a profile", ""]
    lines += [f"* `{key}`: {why}." for key, why in sorted(SECRET_KEYS.items())] + [""]
    return "\n".join(lines)
