"""Finding Flux's two tokenizers offline: CLIP ViT-L/14 and T5-XXL's SentencePiece one.

sd-scripts (``strategy_flux``) loads ``openai/clip-vit-large-patch14`` and
``google/t5-v1_1-xxl`` by repository id and, with ``tokenizer_cache_dir``, keeps each under
``<dir>/<id with "/" -> "_">``. Nothing is downloaded here; each is looked for in

1. the built-in model's own folder (``tokenizer_clip_l/``, ``tokenizer_t5xxl/``);
2. ``tokenizer_cache_dir``: sd-scripts' layout, the same with a ``tokenizer/`` subfolder, or
   the files directly in the folder;
3. the local Hugging Face cache.

A missing one is a ModelError naming ``tokenizer_cache_dir`` and the one ``hf download`` line
that fetches it. The CLIP search is ``models/tokenizers.py``'s; the T5 one accepts a folder
with ``tokenizer.json`` (fast, needs nothing else) or ``spiece.model`` (the repository's own
file; turning it into a fast tokenizer needs the ``sentencepiece`` package).
"""

from __future__ import annotations

from pathlib import Path

from lora_core.errors import ModelError
from lora_core.models import tokenizers as clip_tokenizers

T5_REPO = "google/t5-v1_1-xxl"
T5_CACHE_NAME = T5_REPO.replace("/", "_")
T5_FILES = ("tokenizer.json", "spiece.model")  # either is enough
T5_FETCH_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")
BUILTIN_CLIP_DIR, BUILTIN_T5_DIR = "tokenizer_clip_l", "tokenizer_t5xxl"


def _has_t5(folder: Path) -> bool:
    return any((folder / name).is_file() for name in T5_FILES)


def _t5_in_hf_cache() -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cache = str(clip_tokenizers.hf_hub_cache())
    for name in T5_FILES:
        hit = try_to_load_from_cache(T5_REPO, name, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def t5_fetch_command(tokenizer_dir: Path | None) -> str:
    command = f"hf download {T5_REPO} {' '.join(T5_FETCH_FILES)}"
    if tokenizer_dir is not None:
        command += f" --local-dir {Path(tokenizer_dir) / T5_CACHE_NAME}"
    return command


def find_t5_tokenizer(tokenizer_dir: Path | None = None, model_folder: Path | None = None
                      ) -> Path:
    """The folder to load the T5-XXL tokenizer from (see the module docstring)."""
    candidates = []
    if model_folder is not None:
        candidates.append(Path(model_folder) / BUILTIN_T5_DIR)
    if tokenizer_dir is not None:
        named = Path(tokenizer_dir) / T5_CACHE_NAME
        candidates += [named, named / "tokenizer", Path(tokenizer_dir)]
    for folder in candidates:
        if _has_t5(folder):
            return folder
    cached = _t5_in_hf_cache()
    if cached is not None:
        return cached
    looked = [str(c) for c in candidates] + [f"the Hugging Face cache "
                                             f"{clip_tokenizers.hf_hub_cache()}"]
    raise ModelError(
        f"tokenizer_cache_dir: the T5-XXL tokenizer ({T5_REPO}) is not on this machine; "
        f"model files do not contain tokenizers (looked in: {'; '.join(looked)})",
        f"on a machine with internet run `{t5_fetch_command(tokenizer_dir)}`"
        + ("" if tokenizer_dir is not None else
           " and set `tokenizer_cache_dir` to the folder above it"))


def find_clip_l_tokenizer(tokenizer_dir: Path | None = None, model_folder: Path | None = None
                          ) -> Path:
    """The CLIP ViT-L/14 tokenizer folder (``models/tokenizers.find_tokenizer``)."""
    return clip_tokenizers.find_tokenizer(
        clip_tokenizers.CLIP_L, Path(model_folder) if model_folder else None, BUILTIN_CLIP_DIR,
        Path(tokenizer_dir) if tokenizer_dir else None)


def load_t5_tokenizer(folder: Path, max_length: int):
    """A fast T5 tokenizer from ``folder`` with the ``t5xxl_max_token_length`` window."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    try:
        return T5TokenizerFast.from_pretrained(str(folder), model_max_length=max_length,
                                               local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad folder
        if not (folder / "tokenizer.json").is_file():
            try:
                import sentencepiece  # noqa: F401
            except ImportError:
                raise ModelError(f"tokenizer_cache_dir: the T5 tokenizer in {folder} has only "
                                 "spiece.model, which needs the sentencepiece package",
                                 "pip install sentencepiece (or put the tokenizer.json of "
                                 f"{T5_REPO} beside it)") from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"tokenizer_cache_dir: cannot load the T5 tokenizer from {folder}: "
                         f"{first}", "the tokenizer files are damaged; fetch them again: "
                         f"{t5_fetch_command(None)}") from exc
