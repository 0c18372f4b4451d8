"""Load a base model from a profile's ``pretrained_model_name_or_path`` into a ModelBundle.

Accepted now: ``builtin:<name>`` (built on first use, see ``builtin.py``) and a local diffusers
folder of an SD1 model (one with ``model_index.json``). Everything else fails early with a
ModelError that names the path and says what to do: a missing path, a folder that is not a
diffusers model, a single-file checkpoint, an SD2 or SDXL model (not supported yet), and a
Hugging Face Hub id (nothing is ever downloaded).

Recognising a model (``inspect_model``, ``describe_model``) is pure Python and reads only JSON
files, so the wizard and ``lora-train check`` can call it without importing torch. Only
``load_model`` imports torch, diffusers and transformers. Nothing here prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError
from lora_core.models.builtin import BUILTINS, builtin_folder, ensure_builtin

if TYPE_CHECKING:
    import torch

    from lora_core.models.families import ModelBundle

BUILTIN_PREFIX = "builtin:"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SD1_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
# "owner/name" as on the Hugging Face Hub; only treated as one when no such local path exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DIFFUSERS_FOLDER_HINT = (
    "give a diffusers folder (one with model_index.json, unet/, vae/, text_encoder/, "
    "tokenizer/), or builtin:tiny-sd1 to try things out"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points, after checking it without loading any weights."""

    spec: str
    kind: str  # "builtin" or "diffusers"
    family: str  # "sd1"
    name: str  # for metadata: the builtin name or the folder's basename
    path: Path | None  # the folder (None for a builtin that is not built yet)


def resolve_path(spec: str, base_dir: Path) -> Path:
    """The spec as a path: ``~`` expanded, relative paths taken from ``base_dir``."""
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def inspect_model(spec: str, base_dir: Path) -> ModelSource:
    """Check what ``spec`` points at; ModelError (message names the path, hint says what to
    do) for anything ``load_model`` cannot load. Reads JSON only."""
    spec = spec.strip()
    if not spec:
        raise ModelError("no base model given (pretrained_model_name_or_path is empty)",
                         _DIFFUSERS_FOLDER_HINT)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        folder = builtin_folder(name)  # raises for an unknown name
        return ModelSource(spec, "builtin", "sd1", name, folder if folder.is_dir() else None)

    path = resolve_path(spec, base_dir)
    if not path.exists():
        if _HUB_ID.match(spec) and not spec.startswith("."):
            raise ModelError(
                f"'{spec}' looks like a Hugging Face Hub id, but there is no local folder "
                f"{path}; lora-train does not download models",
                "download the model yourself (for example with `hf download "
                f"{spec} --local-dir <folder>`) and give that local folder",
            )
        raise ModelError(f"the base model {path} does not exist",
                         "check the path; a relative path is taken from the profile's folder")
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            raise ModelError(
                f"{path} is a single-file checkpoint; single-file checkpoints are not "
                "supported yet",
                "convert it to a diffusers folder (diffusers' "
                "scripts/convert_original_stable_diffusion_to_diffusers.py, or "
                "StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)) "
                "and give that folder",
            )
        raise ModelError(f"{path} is a file, not a model folder", _DIFFUSERS_FOLDER_HINT)
    return ModelSource(spec, "diffusers", _detect_family(path), path.name, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}",
                         "the model folder looks damaged; copy or download it again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object",
                         "the model folder looks damaged; copy or download it again")
    return data


def _detect_family(folder: Path) -> str:
    """The family of a diffusers folder ("sd1"), or ModelError for one we cannot train."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"{folder} has no model_index.json, so it is not a diffusers model",
                         _DIFFUSERS_FOLDER_HINT)
    index = _read_json(index_file)
    class_name = str(index.get("_class_name", ""))
    if "XL" in class_name or "text_encoder_2" in index:
        raise ModelError(
            f"{folder} is an SDXL model ({class_name or 'two text encoders'}); SDXL is not "
            "supported yet",
            "use an SD1.x base model (for example a Stable Diffusion 1.5 diffusers folder)",
        )
    if not class_name.startswith("StableDiffusion"):
        raise ModelError(f"{folder} holds a {class_name or 'unknown'} model, not Stable "
                         "Diffusion", _DIFFUSERS_FOLDER_HINT)
    missing = [c for c in SD1_COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"{folder} lacks the subfolder(s) {', '.join(missing)}",
                         "the model folder is incomplete; copy or download it again")
    width = _read_json(folder / "text_encoder" / "config.json").get("hidden_size")
    cross = _read_json(folder / "unet" / "config.json").get("cross_attention_dim")
    if width == 1024 or cross == 1024:
        raise ModelError(
            f"{folder} looks like an SD2.x model (text encoder width 1024); SD2 is not "
            "supported yet",
            "use an SD1.x base model (for example a Stable Diffusion 1.5 diffusers folder)",
        )
    return "sd1"


def describe_model(spec: str, base_dir: Path | None = None) -> str:
    """One short line for people: what the spec is and where, or why it cannot be used."""
    try:
        source = inspect_model(spec, Path(base_dir) if base_dir is not None else Path.cwd())
    except ModelError as exc:
        return f"unusable: {exc.message}"
    if source.kind == "builtin":
        where = f"cached at {source.path}" if source.path else "built on first use"
        return f"SD1 built-in '{source.name}': {BUILTINS[source.name]}; {where}"
    return f"SD1 diffusers folder {source.path}"


def load_model(spec: str, base_dir: Path, dtype: torch.dtype | None = None,
               *, vae_dtype: torch.dtype | None = None) -> ModelBundle:
    """Load the base model ``spec`` (builtin:<name> or a local diffusers folder).

    All weights are loaded straight in ``dtype`` (default float32) so nothing is held twice;
    ``vae_dtype`` overrides it for the VAE (sd-scripts' ``--no_half_vae``). The noise
    scheduler is always the DDPM schedule SD1 was trained with, whatever scheduler the folder
    ships, as in sd-scripts. The models come back in eval mode; freezing is the caller's job.
    """
    source = inspect_model(spec, base_dir)
    folder = ensure_builtin(source.name) if source.kind == "builtin" else source.path
    assert folder is not None
    bundle = _load_sd1_folder(folder, dtype, vae_dtype)
    bundle.model_name = source.name
    return bundle


@contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    """transformers 5.x draws a "Loading weights" bar on stderr; the trainer reports its own
    progress through events, so hide it while loading and restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_sd1_folder(folder: Path, dtype: Any, vae_dtype: Any) -> ModelBundle:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_core.models.builtin import training_noise_scheduler
    from lora_core.models.families import ModelBundle

    dtype = dtype or torch.float32
    vae_dtype = vae_dtype or dtype

    def load(what: str, loader: Any) -> Any:
        try:
            return loader()
        except ModelError:
            raise
        except Exception as exc:  # any loader failure becomes a ModelError naming the part
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"could not load the {what} from {folder / what}: {first_line}",
                             "the model folder may be incomplete or damaged; copy or "
                             "download it again") from exc

    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, local_files_only=True))
    vae = load("vae", lambda: AutoencoderKL.from_pretrained(
        folder, subfolder="vae", torch_dtype=vae_dtype, local_files_only=True))
    with _no_transformers_progress_bar():
        text_encoder = load("text_encoder", lambda: CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, local_files_only=True))
    # model_max_length: without it transformers 5.x allows 1e30 tokens when the folder's
    # tokenizer_config.json does not say 77.
    tokenizer = load("tokenizer", lambda: CLIPTokenizer.from_pretrained(
        folder / "tokenizer", model_max_length=77, local_files_only=True))
    return ModelBundle(
        family="sd1",
        unet=unet,
        vae=vae,
        text_encoders=[text_encoder],
        tokenizers=[tokenizer],
        noise_scheduler=training_noise_scheduler(),
        vae_scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)),
        model_name=folder.name,
        model_file=None,
        prediction_type="epsilon",
    )
