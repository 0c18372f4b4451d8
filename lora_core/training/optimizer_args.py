"""Parse sd-scripts-style ``optimizer_args`` ("name=value" strings) into typed values.

Pure Python: the profile validates these without importing torch. Values are read with
``ast.literal_eval`` as sd-scripts does, so ``betas=0.9,0.99`` becomes a tuple.
"""

from __future__ import annotations

import ast
from typing import Any

from lora_core.errors import ProfileError


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name.isidentifier() or not raw:
            raise ProfileError(
                f"`[optimizer] optimizer_args` item {item!r} is not of the form name=value",
                'write each argument like "weight_decay=0.1" or "betas=0.9,0.99"')
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            lowered = raw.lower()
            if lowered in ("true", "false"):
                value = lowered == "true"
            else:
                raise ProfileError(
                    f"`[optimizer] optimizer_args` item {item!r}: {raw!r} is not a number, "
                    "tuple, boolean or quoted string",
                    'write numbers like 0.1, tuples like 0.9,0.99, booleans like True') from None
        parsed[name] = value
    return parsed
