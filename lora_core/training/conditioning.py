"""Where the loop gets latents and text conditioning from.

The loop asks a :class:`LatentSource` for the latents of a batch and a
:class:`TextConditioner` for its text conditioning (``conditioning()``: a
``TextConditioning`` with the encoder hidden states and, for SDXL, the pooled embedding;
``hidden_states()`` is its hidden part). Two of each:

* :class:`VaeLatents` encodes the batch's pixels every step; :class:`CachedLatents` returns
  latents computed once before training (``cache_latents``, in memory, or
  ``cache_latents_to_disk``, through ``saving.latent_cache``), built by
  :func:`build_cached_latents`;
* :class:`LiveTextEncoder` tokenizes and encodes every step (required when the text encoder
  trains or captions change between steps); :class:`CachedTextEncoder` encodes every distinct
  caption once (:func:`build_cached_text_encoder`, when :func:`text_outputs_cacheable`), in
  memory or, with ``cache_text_encoder_outputs_to_disk``, through ``saving.text_cache``.

Switching caching on never touches the loop. This module decides nothing about *whether* to
cache (the profile and the trainer do) and owns no file format (``saving.latent_cache`` and
``saving.text_cache`` do).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lora_core.dataset.buckets import crop_box
from lora_core.dataset.captions import process_caption
from lora_core.dataset.images import flip_horizontal, load_training_image
from lora_core.dataset.loader import pixels_to_tensor
from lora_core.dataset.plan import TrainingPlan
from lora_core.errors import DatasetError
from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.saving import latent_cache, text_cache
from lora_core.saving.latent_cache import LatentKey
from lora_core.training.prompt_weights import encode_weighted

log = logging.getLogger(__name__)

# progress(done, total): images (or captions) handled so far, out of how many.
Progress = Callable[[int, int], None]
AutocastFactory = Callable[[], contextlib.AbstractContextManager]


class LatentSource(Protocol):
    def latents(self, batch: dict[str, Any],
                generator: torch.Generator | None = None) -> torch.Tensor: ...


class TextConditioner(Protocol):
    def conditioning(self, batch: dict[str, Any],
                     train_text_encoder: bool) -> TextConditioning: ...

    def hidden_states(self, batch: dict[str, Any], train_text_encoder: bool) -> torch.Tensor: ...


class VaeLatents:
    """Encodes pixels with the VAE each step: ``latent_dist.sample() · scaling_factor``."""

    def __init__(self, bundle: ModelBundle, device: torch.device, dtype: torch.dtype) -> None:
        self.vae = bundle.vae
        self.scale = bundle.vae_scaling_factor
        self.shift = bundle.vae_shift_factor
        self.device, self.dtype = device, dtype
        self.warned = False

    @torch.no_grad()
    def latents(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                ) -> torch.Tensor:
        """``generator`` (validation): the posterior's ε from it instead of the global RNG."""
        pixels = batch["pixel_values"].to(self.device, self.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
        if not torch.isfinite(latents).all():
            # fp16 VAEs overflow on some images; sd-scripts replaces them with zeros too.
            latents = torch.nan_to_num(latents, nan=0.0, posinf=0.0, neginf=0.0)
            if not self.warned:
                self.warned = True
                log.warning("the VAE produced NaN/inf latents (replaced with zeros); with "
                            "mixed_precision = \"fp16\" try \"bf16\" or a fixed fp16 VAE")
        return _scaled(latents.float(), self.scale, self.shift)


def _scaled(latents: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """``scale · (z − shift)``: SD's VAEs have no shift (the plain product, as before)."""
    return latents * scale if shift == 0 else (latents - shift) * scale


# ---------------------------------------------------------------------------------------
# Cached latents


@dataclass
class _CachedEntry:
    """One image's latents: in memory (``latents``), or in a cache file (``path``)."""

    key: LatentKey
    path: Path | None = None
    latents: torch.Tensor | None = None
    latents_flipped: torch.Tensor | None = None


class CachedLatents:
    """Latents computed once before training (sd-scripts' ``cache_latents``).

    Batches carry ``item_indices`` and ``flipped`` instead of pixels (the loader's
    ``latents_cached`` mode); each sample gets its image's ``latents``, or
    ``latents_flipped`` when the loader mirrored it. Cached values are unscaled;
    ``vae_scaling_factor`` is applied here, at use, as in sd-scripts.
    """

    def __init__(self, entries: list[_CachedEntry], scale: float, device: torch.device,
                 shift: float = 0.0) -> None:
        self.entries = entries  # one per plan item (items of one image share an entry)
        self.scale = scale
        self.shift = shift
        self.device = device

    def latents(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                ) -> torch.Tensor:
        """(``generator`` is not used: cached latents are fixed already.)"""
        rows = [self._get(self.entries[index], flipped)
                for index, flipped in zip(batch["item_indices"], batch["flipped"], strict=True)]
        return _scaled(torch.stack(rows).to(self.device, torch.float32), self.scale,
                       self.shift)

    @staticmethod
    def _get(entry: _CachedEntry, flipped: bool) -> torch.Tensor:
        if entry.path is not None:
            return latent_cache.load_entry(entry.path, flipped)
        chosen = entry.latents_flipped if flipped else entry.latents
        if chosen is None:  # the loader only flips subsets with flip_aug, which are cached
            raise ValueError(f"no flipped latents cached for {entry.key.image_path}")
        return chosen


def build_cached_latents(plan: TrainingPlan, bundle: ModelBundle, device: torch.device,
                         dtype: torch.dtype, *, to_disk: bool, vae_batch_size: int,
                         root: Path | None = None, progress: Progress | None = None,
                         shard: tuple[int, int] = (0, 1),
                         autocast: AutocastFactory = contextlib.nullcontext) -> CachedLatents:
    """Encode every image of the plan once, or reuse its valid cache file.

    Images are grouped by bucket and encoded ``vae_batch_size`` at a time; an image of a
    ``flip_aug`` subset is also encoded mirrored. Each latent is ``mean + std · ε`` of the
    VAE's posterior, i.e. ``latent_dist.sample()`` as sd-scripts caches (not the mean), with
    ε drawn from a generator seeded by :meth:`LatentKey.sampling_seed`, so the result does
    not depend on the batch an image was encoded in, nor on the device.

    ``to_disk``: files under ``root`` (default ``latent_cache.cache_root()``); otherwise the
    latents stay in CPU memory. ``shard = (rank, world)``: on disk, this process encodes
    only the missing images whose index modulo ``world`` is ``rank`` (the others come from
    the other processes' files); every process encodes everything for an in-memory cache.
    ``progress(done, total)`` is called as images are checked and encoded.

    Raises DatasetError naming the image when a latent is NaN/inf. (A subset using color_aug
    or random_crop, whose pixels change every step, never gets here: the check refuses it.)
    """
    _refuse_varying_pixels(plan)
    vae = bundle.vae
    fingerprint = latent_cache.vae_fingerprint(vae) if to_disk else ""
    root = (root or latent_cache.cache_root()) if to_disk else None
    item_keys, needs_flip = _keys_of(plan, fingerprint)
    entries_by_key = {key: _CachedEntry(key) for key in needs_flip}

    rank, world = shard
    total = len(entries_by_key)
    todo: list[_CachedEntry] = []
    for number, (key, entry) in enumerate(entries_by_key.items()):
        if root is not None:
            entry.path = latent_cache.entry_path(root, key)
            if latent_cache.read_entry(entry.path, key, needs_flip[key]) is not None:
                continue
            if number % world != rank:
                continue  # another process encodes it
        todo.append(entry)
    done = total - len(todo)
    if progress is not None:
        progress(done, total)

    by_bucket: dict[tuple[int, int], list[_CachedEntry]] = {}
    for entry in todo:
        by_bucket.setdefault(entry.key.bucket_reso, []).append(entry)
    for bucket in sorted(by_bucket):
        group = by_bucket[bucket]
        for start in range(0, len(group), vae_batch_size):
            chunk = group[start:start + vae_batch_size]
            images = [load_training_image(Path(e.key.image_path), e.key.bucket_reso,
                                          e.key.resized_size, e.key.crop_offset,
                                          e.key.interpolation) for e in chunk]
            with autocast():
                plain = _encode(vae, images, [e.key.sampling_seed(False) for e in chunk],
                                device, dtype)
                flip_chunk = [i for i, e in enumerate(chunk) if needs_flip[e.key]]
                mirrored = _encode(vae, [flip_horizontal(images[i]) for i in flip_chunk],
                                   [chunk[i].key.sampling_seed(True) for i in flip_chunk],
                                   device, dtype) if flip_chunk else []
            flipped: list[torch.Tensor | None] = [None] * len(chunk)
            for i, latent in zip(flip_chunk, mirrored, strict=True):
                flipped[i] = latent
            for entry, latent, latent_flipped in zip(chunk, plain, flipped, strict=True):
                _check_finite(entry.key, latent, latent_flipped)
                if entry.path is not None:
                    latent_cache.write_entry(entry.path, entry.key, latent, latent_flipped)
                else:
                    entry.latents, entry.latents_flipped = latent, latent_flipped
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return CachedLatents([entries_by_key[key] for key in item_keys],
                         bundle.vae_scaling_factor, device, bundle.vae_shift_factor)


def _keys_of(plan: TrainingPlan, fingerprint: str
             ) -> tuple[list[LatentKey], dict[LatentKey, bool]]:
    """The cache key of every plan item, and for each distinct key whether any subset that
    uses it needs the mirrored latents (an image in two subsets is encoded once)."""
    item_keys: list[LatentKey] = []
    needs_flip: dict[LatentKey, bool] = {}
    for item in plan.items:
        crop = crop_box(item.resized_size, item.bucket_reso)
        options = plan.subsets[item.subset_index].scan.options
        key = latent_cache.latent_key(item.record.path, item.resized_size, item.bucket_reso,
                                      crop, fingerprint, options.resize_interpolation)
        item_keys.append(key)
        flip = options.flip_aug and not item.is_validation
        needs_flip[key] = needs_flip.get(key, False) or flip
    return item_keys, needs_flip


@torch.no_grad()
def _encode(vae: Any, images: list, seeds: list[int], device: torch.device,
            dtype: torch.dtype) -> list[torch.Tensor]:
    """Unscaled float32 CPU latents (C, h, w) of same-sized PIL images, one per image.

    ``mean + std · ε`` is what ``DiagonalGaussianDistribution.sample()`` computes; ε is drawn
    per image on the CPU (like diffusers' ``randn_tensor`` with a CPU generator) in the
    posterior's dtype, so an image's latent is independent of its batch-mates.
    """
    pixels = torch.stack([pixels_to_tensor(image) for image in images]).to(device, dtype)
    posterior = vae.encode(pixels).latent_dist
    mean, std = posterior.mean, posterior.std
    noise = torch.stack([
        torch.randn(tuple(mean.shape[1:]), generator=torch.Generator().manual_seed(seed),
                    dtype=mean.dtype)
        for seed in seeds]).to(mean.device)
    latents = mean + std * noise
    return [row.clone() for row in latents.float().cpu().unbind(0)]


def _check_finite(key: LatentKey, latents: torch.Tensor,
                  latents_flipped: torch.Tensor | None) -> None:
    """A cached NaN would poison every step that uses it, so refuse it (sd-scripts:
    "NaN detected in latents"), unlike on-the-fly latents, which are zeroed with a warning."""
    for tensor in (latents, latents_flipped):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise DatasetError(
                f"NaN detected in latents: {key.image_path} (the VAE produced NaN/inf)",
                "with mixed_precision = \"fp16\" the SD VAE overflows on some images: use "
                "\"bf16\" or \"no\", or an fp16-fixed VAE; otherwise check the image itself")


def _refuse_varying_pixels(plan: TrainingPlan) -> None:
    """Latents can be cached only when an image always gives the same pixels (a flip
    aside), as sd-scripts asserts. The check refuses it, for the profile's [dataset] values
    (checks.rules) and a dataset_config's subsets (dataset_config, subset_options)."""
    varying = [s.name for s in plan.subsets if s.scan.options.pixels_vary]
    assert not varying, (f"cached latents for subsets whose pixels change every step "
                         f"({', '.join(varying)}): the profile check refuses this profile")


# ---------------------------------------------------------------------------------------
# Text conditioning


def encode_captions(bundle: ModelBundle, captions: list[str], device: torch.device
                    ) -> TextConditioning:
    """The U-Net's text conditioning for captions (hidden states, and SDXL's pooled
    embedding), read the bundle's way (``bundle.text``: clip_skip, max_token_length): the
    one path both the live and the cached text conditioner use, so they cannot disagree."""
    if bundle.text.weighted_captions:
        return encode_weighted(bundle, list(captions), device)
    family = bundle.impl
    ids = [t.to(device) for t in family.tokenize(bundle, list(captions))]
    return family.encode(bundle, ids)


class LiveTextEncoder:
    """Tokenizes and encodes captions each step (needed when the text encoder trains)."""

    def __init__(self, bundle: ModelBundle, device: torch.device) -> None:
        self.bundle = bundle
        self.device = device

    def conditioning(self, batch: dict[str, Any], train_text_encoder: bool) -> TextConditioning:
        with torch.set_grad_enabled(train_text_encoder):
            return encode_captions(self.bundle, batch["captions"], self.device)

    def hidden_states(self, batch: dict[str, Any], train_text_encoder: bool) -> torch.Tensor:
        return self.conditioning(batch, train_text_encoder).hidden


def text_outputs_cacheable(plan: TrainingPlan, network_trains_text_encoder: bool) -> bool:
    """True when every caption's encoding is fixed for the whole run.

    That needs a frozen text encoder (no text-encoder LoRA: ``network_train_unet_only``) and
    captions that never change between fetches (no subset with shuffling, dropout, wildcards
    or token warm-up: ``SubsetOptions.captions_vary``), the same conditions sd-scripts puts
    on ``cache_text_encoder_outputs`` (kohya-compat.md §10).
    """
    if network_trains_text_encoder:
        return False
    return not any(subset.scan.options.captions_vary for subset in plan.subsets)


def distinct_captions(plan: TrainingPlan) -> list[str]:
    """Every caption the run trains with, once each, in plan order.

    With ``captions_vary`` false, ``process_caption`` draws nothing from its rng and does not
    read the epoch or step, so the values passed here give exactly the loader's captions.
    """
    seen: dict[str, None] = {}
    for item in plan.items:
        opts = plan.subsets[item.subset_index].scan.options
        caption = process_caption(item.record.caption, opts, random.Random(0), epoch=1, step=0,
                                  max_train_steps=plan.max_train_steps)
        seen.setdefault(caption, None)
    return list(seen)


class CachedTextEncoder:
    """Text conditioning of every caption, computed once (sd-scripts'
    ``cache_text_encoder_outputs``): hidden states and, for SDXL, the pooled embedding
    (sd-scripts' ``hidden_state1`` / ``hidden_state2`` / ``pool2``). Same tensors as
    :class:`LiveTextEncoder` for the same captions: both go through :func:`encode_captions`.

    A caption's row is held in CPU memory (``cache``) or, with
    ``cache_text_encoder_outputs_to_disk``, read from its cache file (``files``) when a batch
    needs it, so a large dataset's outputs need not all fit in memory.
    """

    def __init__(self, cache: dict[str, TextConditioning], live: LiveTextEncoder,
                 files: dict[str, Path] | None = None) -> None:
        self.cache = cache  # caption -> its row (no batch dimension), on the CPU
        self.files = files or {}  # caption -> its text_cache file
        self.live = live
        self.warned = False

    def hidden_states(self, batch: dict[str, Any], train_text_encoder: bool) -> torch.Tensor:
        return self.conditioning(batch, train_text_encoder).hidden

    def conditioning(self, batch: dict[str, Any], train_text_encoder: bool) -> TextConditioning:
        if train_text_encoder:
            raise ValueError("text-encoder outputs were cached, but the text encoder trains")
        captions = batch["captions"]
        missing = [c for c in dict.fromkeys(captions)
                   if c not in self.cache and c not in self.files]
        if missing:
            # Cannot happen while text_outputs_cacheable() agrees with process_caption();
            # encoding the stranger live gives the right tensor, so warn instead of failing.
            if not self.warned:
                self.warned = True
                log.warning("caption %r was not in the text-encoder cache; encoding it live",
                            missing[0])
            with torch.no_grad():
                rows = self.live.conditioning({"captions": missing}, False).to("cpu").rows()
            self.cache.update(zip(missing, rows, strict=True))
        loaded = {c: text_cache.load_entry(self.files[c]) for c in dict.fromkeys(captions)
                  if c not in self.cache}
        rows = [self.cache[c] if c in self.cache else loaded[c] for c in captions]
        return TextConditioning.stack(rows).to(self.live.device)


def build_cached_text_encoder(plan: TrainingPlan, bundle: ModelBundle, device: torch.device,
                              *, batch_size: int = 8, to_disk: bool = False,
                              root: Path | None = None, progress: Progress | None = None,
                              autocast: AutocastFactory = contextlib.nullcontext
                              ) -> CachedTextEncoder:
    """Encode :func:`distinct_captions` in batches of ``batch_size`` (call only when
    :func:`text_outputs_cacheable`).

    ``to_disk``: each caption's outputs go to a ``saving.text_cache`` file under ``root``
    (default ``text_cache.cache_root()``), in a folder named by the fingerprint of the text
    encoders, tokenizers, ``bundle.text`` and family; a valid file from an
    earlier run is reused without encoding, a missing, stale, truncated or corrupt one is
    encoded again. Otherwise the outputs stay in CPU memory. ``progress(done, total)`` is
    called as captions are checked and encoded.
    """
    live = LiveTextEncoder(bundle, device)
    captions = distinct_captions(plan)
    cache: dict[str, TextConditioning] = {}
    files: dict[str, Path] = {}
    keys: dict[str, text_cache.TextKey] = {}
    todo = captions
    if to_disk:
        root = root or text_cache.cache_root()
        fingerprint = text_cache.text_encoder_fingerprint(
            bundle.family, bundle.text_encoders, bundle.tokenizers, bundle.text,
            bundle.impl.text_cache_settings(bundle))
        keys = {c: text_cache.TextKey(c, fingerprint) for c in captions}
        files = {c: text_cache.entry_path(root, keys[c]) for c in captions}
        todo = [c for c in captions if text_cache.read_entry(files[c], keys[c]) is None]
    done = len(captions) - len(todo)
    if progress is not None:
        progress(done, len(captions))
    for _, chunk in _chunks(todo, batch_size):
        with torch.no_grad(), autocast():
            encoded = live.conditioning({"captions": chunk}, False)
        for caption, row in zip(chunk, encoded.to("cpu").rows(), strict=True):
            if to_disk:
                text_cache.write_entry(files[caption], keys[caption], row)
            else:
                cache[caption] = row
        done += len(chunk)
        if progress is not None:
            progress(done, len(captions))
    return CachedTextEncoder(cache, live, files)


def _chunks(values: list[str], size: int) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(values), size):
        yield start, values[start:start + size]
