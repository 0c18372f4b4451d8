"""The on-disk latent cache: one safetensors file per (image, resized size, bucket, crop, VAE).

This module is the only one that knows the cache's file names and contents. Files live in
lora-train's own cache folder, ``paths.cache_dir() / "latents"``, never beside the images:
dataset folders are read-only to us (sd-scripts writes ``<stem>_<W>x<H>_sd.npz`` next to each
image; we keep the idea of one file per image and put it elsewhere).

Layout and validity::

    <root>/<VAE fingerprint[:16]>/<image stem>_<bucket W>x<bucket H>_<digest[:20]>.safetensors

``digest`` hashes what the file is *for* (the image's resolved path, its resized size, its
bucket, its crop and the VAE fingerprint), so the same image trained the same way always
maps to the same file name. The file's metadata repeats those and adds what the image *was*
when encoded: its byte size and modification time (``st_mtime_ns``). We chose size + mtime
over a content hash because checking it costs one ``stat`` per image instead of reading every
image at every start; editors and copy tools update the mtime, and a changed file of the
same length and the same nanosecond mtime is not a realistic case. A file is reused only when
every recorded value matches, its tensors load, have the expected shape and are finite, and
it holds ``latents_flipped`` when the subset needs it; anything else (stale, truncated,
corrupt) is rebuilt and overwritten, never fatal.

Tensors are float32 and *unscaled* (before ``vae_scaling_factor``), as sd-scripts' npz:
``latents`` (C, h, w) and, with ``flip_aug``, ``latents_flipped``. Every write goes through
``lora_core.atomic`` (temporary file + rename), so an interrupted caching run leaves no torn
file behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lora_core import paths
from lora_core.atomic import atomic_write
from lora_core.dataset.buckets import Size
from lora_core.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT = "lora-tui-latents"
FORMAT_VERSION = "1"
# VAE config keys that do not change what the encoder computes: private diffusers keys
# (the folder it came from, the library version) and the factors applied at use.
_CONFIG_KEYS_IGNORED = ("scaling_factor", "shift_factor")


def cache_root() -> Path:
    """Where latent files go: ``<lora-train cache>/latents``."""
    return paths.cache_dir() / "latents"


@dataclass(frozen=True)
class LatentKey:
    """Everything a cached latent depends on."""

    image_path: str  # resolved, absolute
    image_bytes: int
    image_mtime_ns: int
    resized_size: Size
    bucket_reso: Size
    crop_offset: tuple[int, int]  # (left, top) of the crop in the resized image
    vae: str  # vae_fingerprint(); "" for an in-memory cache
    interpolation: str = ""  # resize_interpolation ("": the default rule)

    def digest(self) -> str:
        """The file's identity: what the latent is for (not the image's size or mtime,
        so an edited image overwrites its old file instead of leaving it behind)."""
        parts = [self.image_path, _pair(self.resized_size), _pair(self.bucket_reso),
                 _pair(self.crop_offset), self.vae]
        # Only when set, so the caches written before the option existed stay valid.
        text = "|".join(parts + ([self.interpolation] if self.interpolation else []))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def sampling_seed(self, flipped: bool) -> int:
        """Seed of the ``latent_dist.sample()`` noise for this image (and its mirror).

        A function of the image and how it is cropped only, not of the run seed or the VAE:
        an in-memory and an on-disk cache of the same image draw the same noise, and a cache
        file stays valid across runs with different seeds.
        """
        text = "|".join([self.image_path, _pair(self.resized_size), _pair(self.bucket_reso),
                         _pair(self.crop_offset), "flipped" if flipped else "plain"])
        return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "image_path": self.image_path, "image_bytes": str(self.image_bytes),
            "image_mtime_ns": str(self.image_mtime_ns),
            "resized_size": _pair(self.resized_size), "bucket_reso": _pair(self.bucket_reso),
            "crop_offset": _pair(self.crop_offset), "vae": self.vae,
            **({"interpolation": self.interpolation} if self.interpolation else {}),
        }


def _pair(values: tuple[int, int]) -> str:
    return f"{values[0]}x{values[1]}"


def latent_key(image_path: Path, resized_size: Size, bucket_reso: Size,
               crop_offset: tuple[int, int], vae: str, interpolation: str = "") -> LatentKey:
    """The key of an image as it is now on disk (one ``stat``)."""
    resolved = Path(image_path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise DatasetError(f"cannot read image {image_path}: {exc.strerror}",
                           "the file was moved or deleted after the dataset was checked; "
                           "restore it or check the dataset again") from None
    return LatentKey(str(resolved), stat.st_size, stat.st_mtime_ns, tuple(resized_size),
                     tuple(bucket_reso), tuple(crop_offset), vae, interpolation)


def entry_path(root: Path, key: LatentKey) -> Path:
    """The cache file of ``key`` under ``root`` (see the module docstring for the layout)."""
    stem = Path(key.image_path).stem
    width, height = key.bucket_reso
    return root / key.vae[:16] / f"{stem}_{width}x{height}_{key.digest()[:20]}.safetensors"


def vae_fingerprint(vae: Any) -> str:
    """A hash of everything in the VAE that decides its latents.

    The class name, the config (without private keys and the scaling factors, which are
    applied at use), the weights' dtype, and every encoder weight byte (``encoder.*`` and
    ``quant_conv.*``; the whole state dict for a VAE that names them otherwise). The decoder
    is left out on purpose: a VAE whose decoder alone was fine-tuned (as the popular
    ft-MSE SD VAE was) encodes identically, so its cache stays valid.
    """
    digest = hashlib.sha256()
    config = dict(getattr(vae, "config", {}) or {})
    config = {k: v for k, v in config.items()
              if not k.startswith("_") and k not in _CONFIG_KEYS_IGNORED}
    digest.update(type(vae).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = vae.state_dict()
    encoder = [name for name in state if name.startswith(("encoder.", "quant_conv."))]
    for name in sorted(encoder or state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(state[name].shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_entry(path: Path, key: LatentKey, latents: torch.Tensor,
                latents_flipped: torch.Tensor | None) -> None:
    """Write one image's latents (unscaled; float32 on disk) atomically."""
    tensors = {"latents": _own_storage(latents)}
    if latents_flipped is not None:
        tensors["latents_flipped"] = _own_storage(latents_flipped)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=key.metadata()))


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """float32 CPU copy with a storage of its own (a row of a batch shares the batch's,
    which safetensors would otherwise write whole)."""
    return tensor.detach().to("cpu", torch.float32).clone().contiguous()


def read_entry(path: Path, key: LatentKey, need_flipped: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The cached (latents, latents_flipped) of ``key``, or None when the file is missing,
    was made for something else, or cannot be read (all mean: encode again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}) != key.metadata():
                return None
            names = set(handle.keys())
            if "latents" not in names or (need_flipped and "latents_flipped" not in names):
                return None
            latents = handle.get_tensor("latents")
            flipped = handle.get_tensor("latents_flipped") if need_flipped else None
    except (OSError, SafetensorError, ValueError) as exc:
        log.info("latent cache file %s is unreadable (%s); encoding it again", path, exc)
        return None
    if not _plausible(latents, key) or (flipped is not None and flipped.shape != latents.shape):
        return None
    if not torch.isfinite(latents).all() or (flipped is not None
                                             and not torch.isfinite(flipped).all()):
        return None
    return latents, flipped


def load_entry(path: Path, flipped: bool) -> torch.Tensor:
    """The latents (or mirrored latents) of a file checked by :func:`read_entry` earlier."""
    name = "latents_flipped" if flipped else "latents"
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(name)
    except (OSError, SafetensorError, ValueError) as exc:
        raise DatasetError(
            f"cannot read the latent cache file {path}: {exc}",
            "it changed or vanished during training; start the run again (the cache is "
            "rebuilt), or turn off cache_latents_to_disk") from None


def _plausible(latents: torch.Tensor, key: LatentKey) -> bool:
    """(C, h, w) with the bucket's aspect: guards against a file of the right name and
    metadata but the wrong tensor (written by a buggy or foreign tool)."""
    if latents.ndim != 3 or latents.shape[1] == 0 or latents.shape[2] == 0:
        return False
    width, height = key.bucket_reso
    return width * latents.shape[1] == height * latents.shape[2]

