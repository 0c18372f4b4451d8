"""Find the CLIP tokenizers a model needs, offline.

Checkpoints do not contain tokenizers. sd-scripts loads them from the Hugging Face Hub by
repository id (kohya-compat.md §5.4, §10) and, with ``--tokenizer_cache_dir``, saves each one
under ``<dir>/<repo id with "/" replaced by "_">``. Nothing is downloaded here; a tokenizer is
looked for, in this order:

1. the diffusers folder's own ``tokenizer/`` (``tokenizer_2/`` for SDXL's second one);
2. the profile's ``tokenizer_cache_dir``: sd-scripts' layout (``openai_clip-vit-large-patch14/``
   ...), the same with a ``tokenizer/`` subfolder (what ``hf download --local-dir`` makes of a
   subfolder), or ``vocab.json`` + ``merges.txt`` directly in the folder;
3. the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``) under the repository sd-scripts uses.

If none has it, a ModelError names the tokenizer and the one ``hf download`` command that puts
it where step 2 (or 3) looks.

All three roles share CLIP's BPE vocabulary; they differ in the pad token, which is set here
whatever the found folder says: CLIP ViT-L pads with EOS, the SD 2.x tokenizer and SDXL's
second one pad with ``"!"`` (id 0; sd-scripts sets ``tokenizer2.pad_token_id = 0``).
``model_max_length`` is always 77, the text encoders' window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.errors import ModelError

WINDOW = 77


@dataclass(frozen=True)
class TokenizerRole:
    name: str  # for messages
    repo_id: str
    subfolder: str  # inside the repository ("" or "tokenizer")
    pad_with_eos: bool  # else pad is id 0 ("!")

    @property
    def cache_name(self) -> str:
        """sd-scripts' folder name under --tokenizer_cache_dir."""
        return self.repo_id.replace("/", "_")


CLIP_L = TokenizerRole("CLIP ViT-L/14 tokenizer", "openai/clip-vit-large-patch14", "", True)
SD2 = TokenizerRole("SD 2.x (OpenCLIP ViT-H) tokenizer", "stabilityai/stable-diffusion-2",
                    "tokenizer", False)
CLIP_G = TokenizerRole("OpenCLIP ViT-bigG/14 tokenizer",
                       "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "", False)
ROLES = {"sd1": (CLIP_L,), "sd2": (SD2,), "sdxl": (CLIP_L, CLIP_G)}
_FILES = ("vocab.json", "merges.txt")
_FETCH_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it
    once at import, which would miss a change made later in the same process)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _is_tokenizer_folder(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _FILES)


def _in_hf_cache(role: TokenizerRole) -> Path | None:
    """The snapshot folder of ``role.repo_id`` holding vocab.json and merges.txt, if cached."""
    from huggingface_hub import try_to_load_from_cache

    cache = hf_hub_cache()
    found = []
    for name in _FILES:
        filename = f"{role.subfolder}/{name}" if role.subfolder else name
        hit = try_to_load_from_cache(role.repo_id, filename, cache_dir=str(cache))
        if not isinstance(hit, str):  # None or the "known not to exist" marker
            return None
        found.append(Path(hit).parent)
    return found[0] if len(set(found)) == 1 else None


def find_tokenizer(role: TokenizerRole, model_folder: Path | None = None,
                   subfolder: str = "tokenizer", tokenizer_dir: Path | None = None) -> Path:
    """The folder to load ``role``'s tokenizer from, by the order in the module docstring."""
    candidates = []
    if model_folder is not None:
        candidates.append(model_folder / subfolder)
    if tokenizer_dir is not None:
        named = tokenizer_dir / role.cache_name
        candidates += [named, named / "tokenizer", tokenizer_dir]
    for folder in candidates:
        if _is_tokenizer_folder(folder):
            return folder
    cached = _in_hf_cache(role)
    if cached is not None:
        return cached
    raise missing_tokenizer(role, tokenizer_dir)


def fetch_command(role: TokenizerRole, tokenizer_dir: Path | None) -> str:
    """The one command that puts ``role``'s tokenizer where :func:`find_tokenizer` looks."""
    files = " ".join(f"{role.subfolder}/{n}" if role.subfolder else n for n in _FETCH_FILES)
    command = f"hf download {role.repo_id} {files}"
    if tokenizer_dir is not None:
        command += f" --local-dir {tokenizer_dir / role.cache_name}"
    return command


def missing_tokenizer(role: TokenizerRole, tokenizer_dir: Path | None) -> ModelError:
    where = ["the model's own tokenizer folder"]
    if tokenizer_dir is not None:
        where.append(f"{tokenizer_dir / role.cache_name}")
    where.append(f"the Hugging Face cache {hf_hub_cache()}")
    return ModelError(
        f"the {role.name} ({role.repo_id}) is not on this machine; checkpoints do not "
        f"contain tokenizers (looked in: {'; '.join(where)})",
        f"on a machine with internet run `{fetch_command(role, tokenizer_dir)}` (copy the "
        "result here if that machine is another one)"
        + ("" if tokenizer_dir is not None else
           ", or set `[model] tokenizer_cache_dir` to a folder holding vocab.json and "
           "merges.txt"))


def load_tokenizer(role: TokenizerRole, folder: Path) -> Any:
    """A ``CLIPTokenizer`` from ``folder`` with ``role``'s pad token and a 77-token window."""
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=WINDOW,
                                                  local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load the {role.name} from {folder}: {first}",
                         "the tokenizer files are damaged; fetch them again") from exc
    if role.pad_with_eos:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)  # "!" in CLIP's vocabulary
    return tokenizer


def load_tokenizers(family: str, model_folder: Path | None = None,
                    tokenizer_dir: Path | None = None) -> list[Any]:
    """The family's tokenizers (SDXL: two), found offline; ModelError naming a missing one."""
    roles = ROLES[family]
    subfolders = ("tokenizer", "tokenizer_2")
    return [load_tokenizer(role, find_tokenizer(role, model_folder, subfolders[i], tokenizer_dir))
            for i, role in enumerate(roles)]
