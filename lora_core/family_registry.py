"""The model families by name: where each one's package is, and the words people read.

Everything outside ``lora_core/families/`` that needs something a family decides asks
:func:`family` for the family's object (``families.interface.ModelFamily``) and calls it;
none of them says ``if family == ...``. The family packages are imported by name, on first
use, so this module sits at the bottom of the engine's layers (the checks, the trainer, the
tools and the wizard all reach it) and imports nothing but ``errors``. A family's own module
imports no torch at load time (its methods import what they use), so asking a family a
question about a profile or a file is cheap, and the wizard may do it.

Adding a family: a package (or module) under ``lora_core/families/`` whose ``FAMILY`` is an
object with the interface's attributes, and one line in :data:`_FAMILIES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lora_core.errors import ModelError

if TYPE_CHECKING:
    from lora_core.families.interface import ModelFamily

# name -> module whose FAMILY is the family's object, in the order files are recognised
# (a Flux transformer is told before the SD checkpoint layouts are tried).
_FAMILIES: dict[str, str] = {
    "flux": "lora_core.families.flux.family",
    "sdxl": "lora_core.families.sdxl",
    "sd2": "lora_core.families.sd2",
    "sd1": "lora_core.families.sd1",
}
FAMILY_NAMES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "flux")  # as people list them
_LOADED: dict[str, ModelFamily] = {}


def family(name: str) -> ModelFamily:
    """The family called ``name`` ("sd1", "sd2", "sdxl", "flux"); ModelError if none is."""
    found = _LOADED.get(name)
    if found is not None:
        return found
    module = _FAMILIES.get(name)
    if module is None:
        raise ModelError(f"model family '{name}' is not supported yet",
                         f"supported families: {', '.join(sorted(_FAMILIES))}")
    found = importlib.import_module(module).FAMILY
    _LOADED[name] = found
    return found


def all_families() -> list[ModelFamily]:
    """Every family, in the order files are recognised."""
    return [family(name) for name in _FAMILIES]


def family_words(name: str | None) -> str:
    """How people name the family ("SD 1.x", "SDXL", "Flux.1"); for None or an unknown
    name, "an unknown model family"."""
    if name is None or name not in _FAMILIES:
        return "an unknown model family"
    return family(name).words


def family_label(name: str) -> str:
    """The family's short label ("SD1", "SDXL", "Flux.1") for one-line summaries."""
    return family(name).label
