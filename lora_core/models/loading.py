"""Load a base model from a profile's ``pretrained_model_name_or_path`` into a ModelBundle.

Accepted: ``builtin:<name>`` (built on first use, see ``builtin.py``), a local diffusers folder
of an SD 1.x / SD 2.x / SDXL model, and a single-file checkpoint (``.safetensors``, ``.ckpt``)
in the A1111 / LDM key layout (kohya-compat.md §11). A Hugging Face Hub id is refused: nothing
is ever downloaded. A Flux.1 / Chroma transformer file and ``builtin:tiny-flux`` /
``builtin:tiny-chroma`` are recognised here (family "flux", told by ``families.flux.files``),
but loaded by the Flux family package from all the profile's files, never by ``load_model``.

Recognising a model (``inspect_model``, ``describe_model``) is pure Python: JSON files and
safetensors headers (``checkpoint.py``), so the wizard and ``lora-train check`` can call it
without importing torch. Only ``load_model`` imports torch, diffusers and transformers.

Single files are converted in-process with diffusers' own converters
(``diffusers.loaders.single_file_utils``), fed with configs built from the shipped family
configs and the checkpoint's shapes, never ``from_single_file`` (it would look up the Hub).
Memory: each part is built on the meta device; its tensors are read one by one, cast to the
training dtype as they are read (the file-dtype tensor is dropped at once), re-keyed, and
assigned into the module (``load_state_dict(assign=True)``), so the module's parameters *are*
the loaded tensors. Peak for the U-Net is one copy in the training dtype plus one tensor in the
file's dtype; two full copies never exist. Nothing here prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError
from lora_core.models import checkpoint as ckpt
from lora_core.models.builtin import BUILTINS, builtin_folder, ensure_builtin
from lora_core.models.files import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    SINGLE_FILE_SUFFIXES,
    first_line,
    no_transformers_progress_bar,
)
from lora_core.models.pickle_scan import check_pickle_checkpoint
from lora_core.paths import foreign_path

if TYPE_CHECKING:
    import torch

    from lora_core.models.families import ModelBundle, TextSettings

BUILTIN_PREFIX = "builtin:"
FOLDER_COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"),
                     "sd2": ("unet", "vae", "text_encoder"),
                     "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}
FAMILY_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "flux": "Flux.1"}
# "owner/name" as on the Hugging Face Hub; only treated as one when no such local path exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MODEL_HINT = (
    "give a single-file checkpoint (.safetensors or .ckpt, as A1111 / ComfyUI use), a "
    "diffusers folder (one with model_index.json), a Flux.1 transformer .safetensors, or "
    "builtin:tiny-sd1 to try things out"
)
# A Flux.1 transformer's blocks (BFL and diffusers layouts, also under ComfyUI's
# ``model.diffusion_model.``): such a file is the Flux family's to recognise
# (``families.flux.files.inspect_flux_file``), never read as an SD checkpoint.
_FLUX_BLOCK_PREFIXES = ("double_blocks.", "single_blocks.", "transformer_blocks.",
                        "single_transformer_blocks.")
_COMFY_PREFIX = "model.diffusion_model."


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
    # Prediction marker tensors the file carries (checkpoint.PREDICTION_MARKERS).
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


def _builtin_family(name: str) -> str:
    from lora_core.models import builtin

    return getattr(builtin, "BUILTIN_FAMILIES", {}).get(name, "sd1")


def inspect_model(spec: str, base_dir: Path) -> ModelSource:
    """Check what ``spec`` points at; ModelError (message names the path, hint says what to
    do) for anything ``load_model`` cannot load. Reads JSON and safetensors headers only."""
    spec = spec.strip()
    if not spec:
        raise ModelError("no base model given (pretrained_model_name_or_path is empty)",
                         _MODEL_HINT)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        folder = builtin_folder(name)  # raises for an unknown name
        family = _builtin_family(name)
        return ModelSource(spec, "builtin", family, name, folder if folder.is_dir() else None,
                           f"{FAMILY_LABELS[family]} built-in '{name}': {BUILTINS[name]}")

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
            shapes, metadata = ckpt.read_header(path)
            if _is_flux_transformer(shapes):
                return _flux_source(spec, path, metadata)
            part = flux_file_kind(shapes)
            if part is not None:
                raise ModelError(f"{path} is {part}, not a base model",
                                 "give the base model file here; a Flux run's "
                                 "transformer goes here and its ae / clip_l / t5xxl files "
                                 "in the [flux] section")
            arch = ckpt.read_architecture(shapes, path)
            return ModelSource(spec, "single_file", arch.family, path.name, path,
                               ckpt.summary(arch), arch.missing, metadata,
                               ckpt.prediction_markers(shapes))
        if suffix in PICKLE_SUFFIXES:
            check_pickle_checkpoint(path)
            return ModelSource(spec, "single_file", None, path.name, path,
                               "pickled checkpoint (.ckpt); the family is detected when the "
                               "model loads")
        raise ModelError(f"{path} is a {suffix or 'suffix-less'} file, not a model",
                         _MODEL_HINT)
    family = _detect_folder_family(path)
    return ModelSource(spec, "diffusers", family, path.name, path,
                       f"{FAMILY_LABELS[family]} diffusers folder {path}")


def _is_flux_transformer(shapes: Mapping[str, Any]) -> bool:
    return any(key.removeprefix(_COMFY_PREFIX).startswith(_FLUX_BLOCK_PREFIXES)
               for key in shapes)


def flux_file_kind(shapes: Mapping[str, Any]) -> str | None:
    """What a file made for a Flux run is when it is not where it belongs: its transformer,
    its T5 or CLIP-L text encoder alone, or its 16-channel autoencoder (each a ``[flux]``
    file, never an SD base model or VAE); None for anything else."""
    if _is_flux_transformer(shapes):
        return "a Flux.1 transformer (a Flux base model, not an SD part)"
    keys = list(shapes)
    if "shared.weight" in shapes and any(k.startswith("encoder.block.") for k in keys):
        return "a T5 text encoder alone (Flux's `[flux] t5xxl`)"
    if not any(k.startswith(("model.diffusion_model.", "encoder.", "decoder.",
                             "first_stage_model.")) for k in keys) \
            and any(k.startswith(("text_model.encoder.layers.", "encoder.layers."))
                    for k in keys):
        return "a CLIP text encoder alone (Flux's `[flux] clip_l`)"
    conv_out = shapes.get("encoder.conv_out.weight")
    if conv_out is not None and tuple(conv_out)[:1] == (32,):  # 2 x 16 latent channels
        return "a Flux autoencoder with 16 latent channels (Flux's `[flux] ae`)"
    return None


def _flux_source(spec: str, path: Path, metadata: Mapping[str, str]) -> ModelSource:
    """A Flux.1 / Chroma transformer file, told by its family package (headers only; its
    ae / clip_l / t5xxl files are ``[flux]``'s and are checked with them)."""
    from lora_core.families.flux.files import inspect_flux_file

    info = inspect_flux_file(path, where="pretrained_model_name_or_path")
    return ModelSource(spec, "single_file", "flux", path.name, path, info.describe(),
                       metadata=metadata)


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


def _detect_folder_family(folder: Path) -> str:
    """The family of a diffusers folder, or ModelError for one we cannot train."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"{folder} has no model_index.json, so it is not a diffusers model",
                         _MODEL_HINT)
    index = _read_json(index_file)
    class_name = str(index.get("_class_name", ""))
    if class_name.startswith("Flux"):
        raise ModelError(f"{folder} is a diffusers {class_name} folder; Flux.1 is trained from "
                         "its single files, as sd-scripts does",
                         "give the transformer .safetensors file (flux1-dev.safetensors, or "
                         "the folder's transformer as one file) here and the ae / clip_l / "
                         "t5xxl files in the [flux] section")
    if not class_name.startswith("StableDiffusion"):
        raise ModelError(f"{folder} holds a {class_name or 'unknown'} model, not Stable "
                         "Diffusion", _MODEL_HINT)
    if "XL" in class_name or "text_encoder_2" in index:
        family = "sdxl"
        if not index.get("text_encoder") or index.get("text_encoder") == [None, None]:
            raise ModelError(f"{folder} is an SDXL refiner (no first text encoder); a "
                             "refiner cannot be trained as a base model",
                             "give an SDXL base model")
    else:
        family = "sd1"
    missing = [c for c in FOLDER_COMPONENTS[family] if not (folder / c).is_dir()]
    if missing:
        raise ModelError(f"{folder} lacks the subfolder(s) {', '.join(missing)}",
                         "the model folder is incomplete; copy or download it again")
    if family == "sd1":
        width = _read_json(folder / "text_encoder" / "config.json").get("hidden_size")
        cross = _read_json(folder / "unet" / "config.json").get("cross_attention_dim")
        if width == 1024 or cross == 1024:
            family = "sd2"  # OpenCLIP ViT-H text encoder
    return family


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
    shapes, _ = ckpt.read_header(path)
    part = flux_file_kind(shapes)
    if part is not None:
        raise ModelError(f"{path} (`[model] vae`) is {part}, not an SD VAE",
                         "set `[model] vae` to an SD VAE (4 latent channels), or leave it "
                         "empty; a Flux model's autoencoder is `[flux] ae`")
    if not any(k.startswith((ckpt.VAE_PREFIX, "encoder.down.", "encoder.down_blocks."))
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
    return ckpt.prediction_warning(source.path, source.metadata, v_parameterization)


def load_model(spec: str, base_dir: Path, dtype: torch.dtype | None = None,
               *, vae_dtype: torch.dtype | None = None, vae_spec: str | None = None,
               tokenizer_dir: str | Path | None = None,
               v_parameterization: bool = False, text: TextSettings | None = None
               ) -> ModelBundle:
    """Load the base model ``spec`` (builtin:<name>, a diffusers folder or a single file).

    All weights are loaded straight in ``dtype`` (default float32); ``vae_dtype`` overrides it
    for the VAE (sd-scripts' ``--no_half_vae`` passes float32). ``vae_spec`` replaces the
    model's VAE (``[model] vae``); ``tokenizer_dir`` is ``[model] tokenizer_cache_dir``. The
    noise scheduler is always the DDPM schedule SD was trained with, whatever a folder ships
    (as in sd-scripts), predicting v when ``v_parameterization``; ``text`` (clip_skip,
    max_token_length) is how the bundle reads captions. The models come back in eval
    mode; freezing is the caller's job.
    """
    import torch

    dtype = dtype or torch.float32
    vae_dtype = vae_dtype or dtype
    base_dir = Path(base_dir)
    source = inspect_model(spec, base_dir)
    if source.family == "flux":  # several files: session.FAMILY_LOADERS loads it
        raise ModelError(f"{spec} is a Flux.1 model, which loads from the profile's [flux] "
                         "files too, not through load_model",
                         "load it with families.flux.family.load_flux_bundle(profile, dtype)")
    tok_dir = resolve_path(str(tokenizer_dir), base_dir) if tokenizer_dir else None
    vae_path = inspect_vae(vae_spec, base_dir) if vae_spec else None
    if source.kind == "single_file":
        assert source.path is not None
        from lora_core.models.single_file import load_single_file

        parts = load_single_file(source.path, dtype, vae_dtype, vae_path is not None,
                                  tok_dir)
    else:
        folder = ensure_builtin(source.name) if source.kind == "builtin" else source.path
        assert folder is not None
        parts = _load_folder(folder, _detect_folder_family(folder), dtype, vae_dtype,
                             vae_path is not None, tok_dir)
    if vae_path is not None:
        from lora_core.models.single_file import load_vae

        parts["vae"] = load_vae(vae_path, parts["family"], vae_dtype)
    return _bundle(parts, source, v_parameterization, text)


def _bundle(parts: dict[str, Any], source: ModelSource, v_parameterization: bool,
            text: TextSettings | None) -> ModelBundle:
    from diffusers import DDPMScheduler

    from lora_core.models.builtin import training_noise_scheduler
    from lora_core.models.configs import load_config
    from lora_core.models.families import ModelBundle, TextSettings

    prediction = "v_prediction" if v_parameterization else "epsilon"
    scheduler = DDPMScheduler.from_config(training_noise_scheduler().config,
                                          prediction_type=prediction)
    family = parts["family"]
    # sd-scripts uses the family's constant, whatever a replacement VAE's config says.
    scaling = float(load_config(family, "vae")["scaling_factor"])
    if source.kind != "single_file" and parts.get("own_vae"):
        scaling = float(getattr(parts["vae"].config, "scaling_factor", scaling))
    for model in (parts["unet"], parts["vae"], *parts["text_encoders"]):
        model.eval()
    single = source.kind == "single_file"
    return ModelBundle(
        family=family,
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoders=parts["text_encoders"],
        tokenizers=parts["tokenizers"],
        noise_scheduler=scheduler,
        vae_scaling_factor=scaling,
        model_name=source.name,
        model_file=source.path if single else None,
        prediction_type=prediction,
        text=text or TextSettings(),
    )


# --- diffusers folders ----------------------------------------------------------------------


def _load_folder(folder: Path, family: str, dtype: Any, vae_dtype: Any, vae_replaced: bool,
                 tokenizer_dir: Path | None) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lora_core.models.tokenizers import load_tokenizers

    def load(what: str, loader: Any) -> Any:
        try:
            return loader()
        except ModelError:
            raise
        except Exception as exc:  # any loader failure becomes a ModelError naming the part
            raise ModelError(f"could not load the {what} from {folder / what}: "
                             f"{first_line(exc)}",
                             "the model folder may be incomplete or damaged; copy or "
                             "download it again") from exc

    tokenizers = load_tokenizers(family, folder, tokenizer_dir)
    unet = load("unet", lambda: UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, local_files_only=True))
    vae = None
    if not vae_replaced:
        vae = load("vae", lambda: AutoencoderKL.from_pretrained(
            folder, subfolder="vae", torch_dtype=vae_dtype, local_files_only=True))
    with no_transformers_progress_bar():
        encoders = [load("text_encoder", lambda: CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, local_files_only=True))]
        if family == "sdxl":
            encoders.append(load("text_encoder_2",
                                 lambda: CLIPTextModelWithProjection.from_pretrained(
                                     folder / "text_encoder_2", dtype=dtype,
                                     local_files_only=True)))
    return {"family": family, "unet": unet, "vae": vae, "text_encoders": encoders,
            "tokenizers": tokenizers, "own_vae": not vae_replaced}


# --- single files ---------------------------------------------------------------------------
