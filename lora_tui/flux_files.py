"""What the wizard knows about a Flux.1 base model: its variant (dev, schnell, Chroma), whether
it is a built-in, and the files of the usual names beside its transformer that the model
step offers for ``[flux] ae``, ``clip_l`` and ``t5xxl``.

An offer is only ever shown (the field's placeholder and note) and taken with a key (Tab or
Right, as a path completion is): a file the user did not choose never reaches a profile by
itself. Pure Python: the transformer's header is read by the Flux family package (no torch),
folders are listed; no textual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_core.errors import LoraError
from lora_core.families.flux.builtin import BUILTIN_FLUX, CHROMA_FILE
from lora_core.families.flux.files import inspect_flux_file
from lora_core.family_registry import family
from lora_core.models.loading import ModelSource

FLUX_FILES = ("ae", "clip_l", "t5xxl")  # the [flux] files the model step asks for
VARIANT_LABELS = {"dev": "Flux.1 dev", "schnell": "Flux.1 schnell", "chroma": "Chroma"}
# The names sd-scripts' docs and the model pages give these files, most usual first; a
# glob stands for the other T5 files (t5xxl_fp8_e4m3fn_scaled.safetensors, ...).
USUAL_NAMES: dict[str, tuple[str, ...]] = {
    "ae": ("ae.safetensors",),
    "clip_l": ("clip_l.safetensors",),
    "t5xxl": ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl*.safetensors"),
}
WHAT = {"ae": "the autoencoder (ae.safetensors)", "clip_l": "the CLIP-L text encoder "
        "(clip_l.safetensors)", "t5xxl": "the T5-XXL text encoder (t5xxl_fp16.safetensors)"}


@dataclass(frozen=True)
class FluxModel:
    """A Flux base model as the wizard shows it. ``folder``: the transformer file's folder
    (None for a built-in, whose files are its own)."""

    variant: str  # "dev", "schnell" or "chroma"
    builtin: bool
    folder: Path | None

    @property
    def label(self) -> str:
        return VARIANT_LABELS.get(self.variant, f"Flux.1 {self.variant}")

    def uses(self, key: str) -> bool:
        """Whether the model takes ``[flux] key`` (Chroma has no CLIP-L)."""
        return not (key == "clip_l" and self.variant == "chroma")


def flux_model(source: ModelSource) -> FluxModel | None:
    """The Flux model ``source`` is (None for another family)."""
    if source.family is None or not family(source.family).model_files:
        return None  # a family whose model is one file
    if source.kind == "builtin":
        variant = "chroma" if BUILTIN_FLUX.get(source.name) == CHROMA_FILE else "dev"
        return FluxModel(variant, True, None)
    path = source.path
    try:
        variant = inspect_flux_file(path).variant if path is not None else "dev"
    except LoraError:  # recognised a moment ago; changed on disk since: the check says why
        variant = "dev"
    return FluxModel(variant, False, path.parent if path is not None else None)


def file_beside(folder: Path, key: str) -> str | None:
    """The name of the first file of ``key``'s usual names in ``folder`` (None: none)."""
    for pattern in USUAL_NAMES[key]:
        if "*" in pattern:
            found = sorted(p.name for p in folder.glob(pattern) if p.is_file())
            if found:
                return found[0]
        elif (folder / pattern).is_file():
            return pattern
    return None


def offered_text(model_text: str, model: FluxModel, key: str) -> str | None:
    """The path to offer for ``[flux] key``: a file of the usual name beside the transformer,
    written as the transformer's path is (its folder part as typed, so a relative path stays
    relative to the same folder); None when there is none."""
    if model.folder is None or not model.uses(key):
        return None
    name = file_beside(model.folder, key)
    if name is None:
        return None
    head, sep, _ = model_text.strip().replace("\\", "/").rpartition("/")
    return f"{head}{sep}{name}" if sep else name
