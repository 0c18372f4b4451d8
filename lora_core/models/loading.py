"""What a profile's base model is, from its name, folder or file headers, without loading it.

``inspect_model`` answers for ``builtin:<name>`` (``models.builtin``), a local diffusers folder
and a single file; each family claims its own files (``claim_model_file``,
``claim_model_folder``: SD's checkpoint layouts, Flux's transformer), so this module names no
family. A Hugging Face Hub id is refused: nothing is ever downloaded. Loading is the
family's (``family_registry.family(source.family).load(profile, dtype)``).

Pure Python: JSON files and safetensors headers only, so the wizard and ``lora-train check``
call it without importing torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError
from lora_core.family_registry import all_families, family_label
from lora_core.models.builtin import BUILTIN_FAMILIES, BUILTINS, builtin_folder
from lora_core.models.files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, SINGLE_FILE_SUFFIXES
from lora_core.models.headers import read_header
from lora_core.models.pickle_scan import check_pickle_checkpoint
from lora_core.models.prediction import prediction_warning as file_prediction_warning
from lora_core.paths import foreign_path

BUILTIN_PREFIX = "builtin:"
# "owner/name" as on the Hugging Face Hub; only treated as one when no such local path exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MODEL_HINT = (
    "give a single-file checkpoint (.safetensors or .ckpt, as A1111 / ComfyUI use), a "
    "diffusers folder (one with model_index.json), a Flux.1 transformer .safetensors, or "
    "builtin:tiny-sd1 to try things out"
)
# The VAE inside an LDM-layout checkpoint (a VAE file may be one).
_LDM_VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points, after checking it without loading any weights."""

    spec: str
    kind: str  # "builtin" | "diffusers" | "single_file"
    family: str | None  # "sd1" | "sd2" | "sdxl" | "flux"; None: a .ckpt, told when it loads
    name: str  # for metadata: the builtin name, the folder's or the file's basename
    path: Path | None  # the folder or file (None for a builtin that is not built yet)
    summary: str = ""  # one line for people
    missing: tuple[str, ...] = ()  # parts the file lacks (only "VAE" can be made up for)
    metadata: Mapping[str, str] = field(default_factory=dict)  # safetensors __metadata__
    # Prediction marker tensors the file carries (models.prediction.PREDICTION_MARKERS).
    markers: tuple[str, ...] = ()


def resolve_path(spec: str, base_dir: Path) -> Path:
    """The spec as a path: ``~`` expanded, relative paths taken from ``base_dir``; a path of
    another machine (``C:\\...`` on Linux) is refused, never joined to ``base_dir``."""
    kind = foreign_path(str(spec))
    if kind:
        raise ModelError(f"{spec} is {kind}, from another machine; it means nothing here",
                         "give the path of that file or folder on this machine")
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def inspect_model(spec: str, base_dir: Path) -> ModelSource:
    """Check what ``spec`` points at; ModelError (message names the path, hint says what to
    do) for anything no family can load. Reads JSON and safetensors headers only."""
    spec = spec.strip()
    if not spec:
        raise ModelError("no base model given (pretrained_model_name_or_path is empty)",
                         MODEL_HINT)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        folder = builtin_folder(name)  # raises for an unknown name
        family = BUILTIN_FAMILIES[name]
        return ModelSource(spec, "builtin", family, name, folder if folder.is_dir() else None,
                           f"{family_label(family)} built-in '{name}': {BUILTINS[name]}")

    path = resolve_path(spec, base_dir)
    if not path.exists():
        # "models/sd15.safetensors" is shaped like "owner/name" too; a model file suffix
        # says it was meant as a path.
        if _HUB_ID.match(spec) and not spec.startswith(".") \
                and not spec.lower().endswith(SINGLE_FILE_SUFFIXES):
            raise ModelError(
                f"'{spec}' looks like a Hugging Face Hub id, but there is no local folder "
                f"{path}; lora-train does not download models",
                "download the model yourself (for example with `hf download "
                f"{spec} --local-dir <folder>`) and give that local folder",
            )
        raise ModelError(f"the base model {path} does not exist",
                         "check the path; a relative path is taken from the profile's folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == SAFETENSORS_SUFFIX:
            shapes, metadata = read_header(path)
            # Each family claims its own files, or refuses one of its parts given here
            # (Flux's transformer and its ae / clip_l / t5xxl); SD's checkpoint reader,
            # asked last, tells SD 1.x, 2.x and SDXL apart from the shapes.
            for fam in all_families():
                claimed = fam.claim_model_file(spec, path, shapes, metadata)
                if claimed is not None:
                    return claimed
            raise ModelError(f"{path} is not a model any family here reads", MODEL_HINT)
        if suffix in PICKLE_SUFFIXES:
            check_pickle_checkpoint(path)
            return ModelSource(spec, "single_file", None, path.name, path,
                               "pickled checkpoint (.ckpt); the family is detected when the "
                               "model loads")
        raise ModelError(f"{path} is a {suffix or 'suffix-less'} file, not a model",
                         MODEL_HINT)
    return _folder_source(spec, path)


def _folder_source(spec: str, folder: Path) -> ModelSource:
    """A diffusers folder, claimed by its family from ``model_index.json``."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"{folder} has no model_index.json, so it is not a diffusers model",
                         MODEL_HINT)
    index = read_json(index_file)
    for fam in all_families():
        claimed = fam.claim_model_folder(spec, folder, index)
        if claimed is not None:
            return claimed
    class_name = str(index.get("_class_name", ""))
    raise ModelError(f"{folder} holds a {class_name or 'unknown'} model, not Stable "
                     "Diffusion", MODEL_HINT)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}",
                         "the model folder looks damaged; copy or download it again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object",
                         "the model folder looks damaged; copy or download it again")
    return data


def misplaced_part(shapes: Mapping[str, Any]) -> str | None:
    """What a file is when a family says it belongs elsewhere (a Flux transformer, T5,
    CLIP-L or 16-channel autoencoder given as an SD model or VAE), else None."""
    for fam in all_families():
        part = fam.misplaced_part(shapes)
        if part is not None:
            return part
    return None


def inspect_vae(spec: str, base_dir: Path) -> Path:
    """The path of ``[model] vae`` when it can be a VAE (what ``single_file.load_vae``
    reads), told from headers; ModelError naming it otherwise."""
    path = resolve_path(spec, base_dir)
    if not path.exists():
        raise ModelError(f"the VAE {path} (`[model] vae`) does not exist",
                         "give a VAE .safetensors/.ckpt file or diffusers folder, or leave "
                         "`[model] vae` empty to use the model's own")
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            raise ModelError(f"the VAE folder {path} has no config.json (nor vae/config.json)",
                             "give a diffusers VAE folder or a VAE file")
        return path
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        check_pickle_checkpoint(path)
        return path
    if suffix != SAFETENSORS_SUFFIX:
        raise ModelError(f"the VAE {path} is a {suffix or 'suffix-less'} file, not a VAE",
                         "give a VAE .safetensors/.ckpt file or diffusers folder")
    shapes, _ = read_header(path)
    part = misplaced_part(shapes)
    if part is not None:
        raise ModelError(f"{path} (`[model] vae`) is {part}, not an SD VAE",
                         "set `[model] vae` to an SD VAE (4 latent channels), or leave it "
                         "empty; a Flux model's autoencoder is `[flux] ae`")
    if not any(k.startswith((_LDM_VAE_PREFIX, "encoder.down.", "encoder.down_blocks."))
               for k in shapes):
        raise ModelError(f"{path} is not a VAE (no encoder/decoder tensors)",
                         "set `[model] vae` to a VAE file or folder, or leave it empty")
    return path


def describe_model(spec: str, base_dir: Path | None = None) -> str:
    """One short line for people: what the spec is and where, or why it cannot be used."""
    try:
        source = inspect_model(spec, Path(base_dir) if base_dir is not None else Path.cwd())
    except ModelError as exc:
        return f"unusable: {exc.message}"
    if source.kind == "builtin":
        where = f"cached at {source.path}" if source.path else "built on first use"
        return f"{source.summary}; {where}"
    if source.kind == "single_file":
        return f"{source.path} ({source.summary})"
    return source.summary


def prediction_warning(source: ModelSource, v_parameterization: bool) -> str | None:
    """A warning when the model's file name or metadata suggests the other prediction type
    than ``[model] v_parameterization`` says (preflight shows it as an advisory)."""
    if source.kind == "builtin":
        return None
    return file_prediction_warning(source.path, source.metadata, v_parameterization)
