"""How a profile field is declared: :func:`setting` records its one-line doc and its
validation rule in the dataclass field's metadata (read by the checks, ``lora-train fields``
and the wizard). The sections themselves are in ``profile`` (and ``profile_flux``)."""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_core.profile import When


def setting(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    path: bool = False,
    required: bool = False,
    or_import_path: bool = False,
    applies: When | None = None,
    default_when: tuple[tuple[When, Any], ...] = (),
) -> Any:
    """Declare one profile field with its doc line and validation rule. ``or_import_path``:
    besides the choices, any ``module.Class`` import path is allowed (as sd-scripts allows
    for optimizer_type). ``applies``: the field only means something when another field
    has certain values (the wizard hides it otherwise; the check refuses a value set where
    it does not apply, unless ``applies.refused`` is False). ``default_when``: the default
    the wizard offers when a condition holds (the engine's default stays ``default``)."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "path": path,
            "required": required, "or_import_path": or_import_path, "applies": applies,
            "default_when": default_when}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
