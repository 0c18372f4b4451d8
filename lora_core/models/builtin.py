"""The built-in models by name: what each is, its family, and where it lives (the family
builds it: ``families/sd/builtin.py`` the SD ones, ``families/flux/builtin.py`` Flux's).

Pure Python: the wizard and ``lora-train check`` list the built-ins and find their folders
without building anything.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.errors import ModelError
from lora_core.family_registry import family

BUILTINS: dict[str, str] = {
    "tiny-sd1": "tiny SD1-shaped model with random weights (about 6 MB), for tests and demos",
    "tiny-sdxl": "tiny SDXL-shaped model with random weights (two text encoders), for tests "
                 "and demos",
    # Built by the Flux family package (families.flux.builtin, one folder for both: the
    # DiT files beside ae, clip_l, t5xxl and the two tokenizers); names as its BUILTIN_FLUX.
    "tiny-flux": "tiny Flux.1-dev-shaped model with random weights (DiT, ae, clip_l, t5xxl), "
                 "for tests and demos",
    "tiny-chroma": "tiny Chroma-shaped model with random weights (DiT, ae, t5xxl; no CLIP-L), "
                   "for tests and demos",
}
# The model family of each built-in (what loading.inspect_model reports).
BUILTIN_FAMILIES: dict[str, str] = {"tiny-sd1": "sd1", "tiny-sdxl": "sdxl",
                                    "tiny-flux": "flux", "tiny-chroma": "flux"}


def builtin_folder(name: str, cache_root: Path | None = None) -> Path:
    """Where ``name`` is (or will be) cached; raises ModelError for an unknown name. The
    built-in's family says where (an SD one: a diffusers folder in the cache; Flux's: its
    folder of single files)."""
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise ModelError(f"unknown built-in model 'builtin:{name}'",
                         f"the built-in models are: {known}")
    return family(BUILTIN_FAMILIES[name]).builtin_folder(name, cache_root)


def ensure_builtin(name: str, cache_root: Path | None = None) -> Path:
    """The folder of built-in model ``name``, built by its family on first use."""
    builtin_folder(name, cache_root)  # refuses an unknown name
    return family(BUILTIN_FAMILIES[name]).ensure_builtin(name, cache_root)
