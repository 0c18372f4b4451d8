"""Where the loop gets latents and text conditioning from.

The loop asks a :class:`LatentSource` for the latents of a batch and a
:class:`TextConditioner` for its encoder hidden states. Today both encode on the fly;
cached variants (latents on disk, text-encoder outputs) implement the same two calls, so
switching caching on never touches the loop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch

from lora_core.models.families import ModelBundle, family_of

log = logging.getLogger(__name__)


class LatentSource(Protocol):
    def latents(self, batch: dict[str, Any]) -> torch.Tensor: ...


class TextConditioner(Protocol):
    def hidden_states(self, batch: dict[str, Any], train_text_encoder: bool) -> torch.Tensor: ...


class VaeLatents:
    """Encodes pixels with the VAE each step: ``latent_dist.sample() · scaling_factor``."""

    def __init__(self, bundle: ModelBundle, device: torch.device, dtype: torch.dtype) -> None:
        self.vae = bundle.vae
        self.scale = bundle.vae_scaling_factor
        self.device, self.dtype = device, dtype
        self.warned = False

    @torch.no_grad()
    def latents(self, batch: dict[str, Any]) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self.device, self.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample()
        if not torch.isfinite(latents).all():
            # fp16 VAEs overflow on some images; sd-scripts replaces them with zeros too.
            latents = torch.nan_to_num(latents, nan=0.0, posinf=0.0, neginf=0.0)
            if not self.warned:
                self.warned = True
                log.warning("the VAE produced NaN/inf latents (replaced with zeros); with "
                            "mixed_precision = \"fp16\" try \"bf16\" or a fixed fp16 VAE")
        return latents.float() * self.scale


class LiveTextEncoder:
    """Tokenizes and encodes captions each step (needed when the text encoder trains)."""

    def __init__(self, bundle: ModelBundle, device: torch.device, clip_skip: int) -> None:
        self.bundle = bundle
        self.family = family_of(bundle)
        self.device = device
        self.clip_skip = clip_skip

    def hidden_states(self, batch: dict[str, Any], train_text_encoder: bool) -> torch.Tensor:
        ids = [t.to(self.device) for t in self.family.tokenize(self.bundle, batch["captions"])]
        with torch.set_grad_enabled(train_text_encoder):
            return self.family.encode_text(self.bundle, ids, self.clip_skip)
