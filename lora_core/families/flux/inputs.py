"""The files a Flux profile trains from, resolved and recognised once for ``check`` and ``run``.

A Flux run needs four files (sd-scripts' ``--pretrained_model_name_or_path``, ``--ae``,
``--clip_l``, ``--t5xxl``) and two tokenizers. :func:`resolve_inputs` finds each, reads its
header (never its weights, never torch) and tells the variant; every problem is a ModelError
or ProfileError that names the profile field to fix. ``run`` loads exactly what this returns,
so ``check`` stops on what ``run`` would.

``builtin:tiny-flux`` takes its files from the built-in folder (a field left empty means the
built-in's own file; a path given replaces it); the folder is built by the run, so ``check``
before the first run cannot read those headers and trusts the built-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_core.errors import ModelError, ProfileError
from lora_core.families.flux import builtin as builtin_names
from lora_core.families.flux.files import (
    FluxFileInfo,
    check_variant_settings,
    inspect_flux_file,
    resolve_variant,
)
from lora_core.families.flux.tokenizers import find_clip_l_tokenizer, find_t5_tokenizer
from lora_core.profile import BUILTIN_PREFIX, Profile

T5_MAX_LENGTH = {"dev": 512, "schnell": 256, "chroma": 512}  # sd-scripts' defaults
_WHAT = {"ae": "autoencoder (ae.safetensors)", "clip_l": "CLIP-L text encoder "
         "(clip_l.safetensors)", "t5xxl": "T5-XXL text encoder (t5xxl_fp16.safetensors)"}


@dataclass(frozen=True)
class FluxInputs:
    """What a Flux run loads. ``clip_l`` / ``clip_tokenizer`` are None for Chroma."""

    dit: Path
    info: FluxFileInfo | None  # None: the built-in, not built yet (check only)
    variant: str  # "dev", "schnell" or "chroma"
    ae: Path
    clip_l: Path | None
    t5xxl: Path
    clip_tokenizer: Path | None
    t5_tokenizer: Path | None  # None: the built-in, not built yet (check only)
    t5_max_length: int
    builtin_folder: Path | None = None

    @property
    def name(self) -> str:
        return self.dit.name


def is_flux_builtin(spec: str) -> bool:
    return spec.strip() in (f"{BUILTIN_PREFIX}{n}" for n in builtin_names.BUILTIN_FLUX)


def resolve_inputs(profile: Profile, builtin_folder: Path | None = None) -> FluxInputs:
    """The four files and two tokenizers of a Flux profile, recognised from their headers.

    ``builtin_folder``: the built tiny model's folder (the run builds it first); without it a
    built-in profile is resolved as far as it can be without the files.
    """
    spec = profile.model.pretrained_model_name_or_path.strip()
    fx = profile.flux
    builtin = is_flux_builtin(spec)
    if builtin:
        name = spec[len(BUILTIN_PREFIX):]
        folder = (Path(builtin_folder) if builtin_folder is not None
                  else builtin_names.tiny_flux_folder())
        dit = folder / builtin_names.BUILTIN_FLUX[name]
        built = (folder / builtin_names.T5_FILE).is_file()
    else:
        folder, built = None, True
        dit = profile.path("model", "pretrained_model_name_or_path")
        assert dit is not None
    info = inspect_flux_file(dit, where="pretrained_model_name_or_path") if built else None
    variant = (resolve_variant(info, fx.model_type) if info is not None
               else ("chroma" if builtin_names.BUILTIN_FLUX[name] == builtin_names.CHROMA_FILE
                     else "dev"))
    check_variant_settings(variant, fx.apply_t5_attn_mask)
    if variant == "chroma" and fx.guidance_scale not in (None, 0.0):
        raise ProfileError(f"[flux] guidance_scale: {fx.guidance_scale} for Chroma, which is "
                           "trained with guidance 0.0 (sd-scripts requires it)",
                           "set guidance_scale = 0.0 or leave it unset for Chroma")

    def file_of(key: str, builtin_file: str) -> Path:
        given = profile.path("flux", key)
        if given is None:
            if folder is not None:
                return folder / builtin_file
            raise ProfileError(f"[flux] {key} is empty: a Flux run needs the {_WHAT[key]}",
                               f"set `[flux] {key}` to that file's path")
        if not given.is_file():
            raise ModelError(f"[flux] {key}: {given} does not exist",
                             f"give the path of the {_WHAT[key]}; a relative path is taken "
                             "from the profile's folder")
        return given

    ae = file_of("ae", builtin_names.AE_FILE)
    t5xxl = file_of("t5xxl", builtin_names.T5_FILE)
    clip_l = None
    if variant == "chroma":
        if profile.path("flux", "clip_l") is not None:
            raise ProfileError("[flux] clip_l: Chroma has no CLIP-L input",
                               "remove clip_l for a Chroma model")
    else:
        clip_l = file_of("clip_l", builtin_names.CLIP_L_FILE)
    if built:
        recognise_text_and_ae(ae, clip_l, t5xxl)
    tok_dir = profile.path("model", "tokenizer_cache_dir")
    clip_tok = None
    if clip_l is not None and built:
        clip_tok = find_clip_l_tokenizer(tok_dir, folder)
    t5_tok = find_t5_tokenizer(tok_dir, folder) if built else None
    length = fx.t5xxl_max_token_length or T5_MAX_LENGTH[variant]
    return FluxInputs(dit, info, variant, ae, clip_l, t5xxl, clip_tok, t5_tok, length,
                      folder)


def recognise_text_and_ae(ae: Path, clip_l: Path | None, t5xxl: Path) -> None:
    """Each of the three files is what its field says, from its header's tensor names (an
    SD checkpoint or a LoRA given as ``t5xxl`` is named as such)."""
    from lora_core.models.headers import read_entries

    for key, path, test in (
            ("ae", ae, lambda k: any(x.startswith(("encoder.down.", "decoder.up.",
                                                   "encoder.down_blocks.")) for x in k)),
            ("clip_l", clip_l, lambda k: any("text_model.encoder.layers." in x
                                             or x.startswith("encoder.layers.") for x in k)),
            ("t5xxl", t5xxl, lambda k: any(x.startswith("encoder.block.") for x in k))):
        if path is None:
            continue
        try:
            _, entries, _ = read_entries(path)
        except (OSError, ValueError) as exc:
            raise ModelError(f"[flux] {key}: {path} cannot be read as a .safetensors file "
                             f"({exc})", f"give the {_WHAT[key]}") from None
        keys = list(entries)
        if not test(keys):
            kind = _kind_of({k: e[1] for k, e in entries.items()})
            raise ModelError(f"[flux] {key}: {path.name} is {kind}, not the "
                             f"{_WHAT[key]}", f"give the {_WHAT[key]}")


def _kind_of(shapes: dict[str, tuple[int, ...]]) -> str:
    """What a file given for the wrong field is: a LoRA, an SD checkpoint, or one of the
    Flux files (``files.misplaced_part``, which says where each belongs)."""
    from lora_core.families.flux.files import misplaced_part

    keys = list(shapes)
    if any(k.startswith("lora_") or ".lora_down." in k for k in keys):
        return "a LoRA file"
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        return "a Stable Diffusion checkpoint"
    return misplaced_part(shapes) or f"another kind of file (first keys: {', '.join(keys[:3])})"
