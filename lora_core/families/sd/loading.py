"""Load an SD 1.x / SD 2.x / SDXL base model into a ModelBundle, and claim SD files and
folders for ``models.loading.inspect_model``.

Accepted: the SD built-ins (``builtin.py``), a local diffusers folder, and a single-file
checkpoint (``.safetensors``, ``.ckpt``) in the A1111 / LDM key layout (kohya-compat.md §11),
whose variant ``checkpoint.py`` reads from the tensor shapes.

Single files are converted in-process with diffusers' own converters
(``diffusers.loaders.single_file_utils``), fed with configs built from the shipped family
configs and the checkpoint's shapes, never ``from_single_file`` (it would look up the Hub).
Memory: each part is built on the meta device; its tensors are read one by one, cast to the
training dtype as they are read (the file-dtype tensor is dropped at once), re-keyed, and
assigned into the module (``load_state_dict(assign=True)``), so the module's parameters *are*
the loaded tensors. Peak for the U-Net is one copy in the training dtype plus one tensor in the
file's dtype; two full copies never exist. Nothing here prints.

Claiming reads JSON and headers only (no torch); only ``load_model`` imports torch, diffusers
and transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError
from lora_core.families.sd import checkpoint as ckpt
from lora_core.family_registry import family_label, family_words
from lora_core.models.builtin import ensure_builtin
from lora_core.models.files import first_line, no_transformers_progress_bar
from lora_core.models.loading import (
    MODEL_HINT,
    ModelSource,
    inspect_model,
    inspect_vae,
    read_json,
    resolve_path,
)
from lora_core.models.prediction import prediction_markers

if TYPE_CHECKING:
    import torch

    from lora_core.models.bundle import ModelBundle, TextSettings

FOLDER_COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"),
                     "sd2": ("unet", "vae", "text_encoder"),
                     "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


def claim_file(spec: str, path: Path, shapes: Mapping[str, tuple[int, ...]],
               metadata: Mapping[str, str]) -> ModelSource:
    """An LDM-layout checkpoint as the base model; ModelError (naming the path) for a file
    that is not one: SD's reader is asked last, so it says what the file is not."""
    arch = ckpt.read_architecture(shapes, path)
    return ModelSource(spec, "single_file", arch.family, path.name, path, ckpt.summary(arch),
                       arch.missing, metadata, prediction_markers(shapes))


def claim_folder(spec: str, folder: Path, index: Mapping[str, Any]) -> ModelSource | None:
    """A diffusers Stable Diffusion folder (``model_index.json`` read); None for another
    pipeline's folder."""
    class_name = str(index.get("_class_name", ""))
    if not class_name.startswith("StableDiffusion"):
        return None
    if class_name.startswith("StableDiffusion3"):  # it has a text_encoder_2, as SDXL has
        raise ModelError(f"{folder} is a diffusers {class_name} folder; Stable Diffusion 3 "
                         "is not supported yet", MODEL_HINT)
    family = detect_folder_family(folder)
    return ModelSource(spec, "diffusers", family, folder.name, folder,
                       f"{family_label(family)} diffusers folder {folder}")


def detect_folder_family(folder: Path) -> str:
    """The family of a diffusers SD folder, or ModelError for one we cannot train."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"{folder} has no model_index.json, so it is not a diffusers model",
                         MODEL_HINT)
    index = read_json(index_file)
    class_name = str(index.get("_class_name", ""))
    if not class_name.startswith("StableDiffusion"):
        raise ModelError(f"{folder} holds a {class_name or 'unknown'} model, not Stable "
                         "Diffusion", MODEL_HINT)
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
        width = read_json(folder / "text_encoder" / "config.json").get("hidden_size")
        cross = read_json(folder / "unet" / "config.json").get("cross_attention_dim")
        if width == 1024 or cross == 1024:
            family = "sd2"  # OpenCLIP ViT-H text encoder
    return family


def load_model(spec: str, base_dir: Path, dtype: torch.dtype | None = None,
               *, vae_dtype: torch.dtype | None = None, vae_spec: str | None = None,
               tokenizer_dir: str | Path | None = None,
               v_parameterization: bool = False, text: TextSettings | None = None,
               fp8_unet: bool = False) -> ModelBundle:
    """Load the base model ``spec`` (builtin:<name>, a diffusers folder or a single file).
    ``fp8_unet``: a single file's U-Net Linear / Conv2d weights are read as float8 (its
    peak memory never holds the wide U-Net); a folder's are converted after loading.

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
    if source.family is not None and source.family not in FOLDER_COMPONENTS:
        raise ModelError(f"{spec} is a {family_words(source.family)} model, which its family "
                         "loads from the profile's files, not load_model",
                         "load it with family_registry.family(name).load(profile, dtype)")
    tok_dir = resolve_path(str(tokenizer_dir), base_dir) if tokenizer_dir else None
    vae_path = inspect_vae(vae_spec, base_dir) if vae_spec else None
    if source.kind == "single_file":
        assert source.path is not None
        from lora_core.families.sd.single_file import load_single_file

        parts = load_single_file(source.path, dtype, vae_dtype, vae_path is not None,
                                  tok_dir, fp8_unet=fp8_unet)
    else:
        folder = ensure_builtin(source.name) if source.kind == "builtin" else source.path
        assert folder is not None
        parts = _load_folder(folder, detect_folder_family(folder), dtype, vae_dtype,
                             vae_path is not None, tok_dir)
    if vae_path is not None:
        from lora_core.families.sd.single_file import load_vae

        parts["vae"] = load_vae(vae_path, parts["family"], vae_dtype)
    return _bundle(parts, source, v_parameterization, text)


def _bundle(parts: dict[str, Any], source: ModelSource, v_parameterization: bool,
            text: TextSettings | None) -> ModelBundle:
    from diffusers import DDPMScheduler

    from lora_core.families.sd.builtin import training_noise_scheduler
    from lora_core.families.sd.configs import load_config
    from lora_core.models.bundle import ModelBundle, TextSettings

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
