"""What a loaded base model is to the trainer: the bundle of its parts and the text
conditioning its family makes from captions.

A :class:`ModelBundle` carries the loaded parts (the denoiser in ``unet``, the autoencoder,
the text encoders and tokenizers), how it reads text (:class:`TextSettings`) and the name of
its family; ``bundle.impl`` is the family's object (``lora_core.family_registry``), which
the trainer asks how to encode text, what extra conditioning the denoiser takes, which
objective it trains with and how it samples. The training loop never asks "is this SDXL?".

This module loads nothing from disk and names no LoRA keys; it imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lora_core.families.interface import ModelFamily


@dataclass
class TextConditioning:
    """What the text encoders give the U-Net for a batch of captions.

    ``hidden``: ``encoder_hidden_states`` (B, T, D) for cross-attention. ``pooled``: one
    vector per caption (B, P) that SDXL adds to the timestep embedding (TE2's projected EOS
    state, kohya-compat.md §10); None for SD 1.x/2.x.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # (B, T) 1 for real tokens (Flux's T5); None for SD

    def to(self, *args: Any, **kwargs: Any) -> TextConditioning:
        """The float tensors moved / cast like ``Tensor.to`` (the mask only moved)."""
        pooled = None if self.pooled is None else self.pooled.to(*args, **kwargs)
        mask = None
        if self.mask is not None:
            device = next((a for a in args if not _is_dtype(a)), kwargs.get("device"))
            mask = self.mask if device is None else self.mask.to(device)
        return TextConditioning(self.hidden.to(*args, **kwargs), pooled, mask)

    def rows(self) -> list[TextConditioning]:
        """One TextConditioning per caption (leading dimension dropped), e.g. for a cache."""
        hidden = self.hidden.unbind(0)
        pooled = [None] * len(hidden) if self.pooled is None else self.pooled.unbind(0)
        masks = [None] * len(hidden) if self.mask is None else self.mask.unbind(0)
        return [TextConditioning(h, p, m)
                for h, p, m in zip(hidden, pooled, masks, strict=True)]

    @staticmethod
    def stack(rows: list[TextConditioning]) -> TextConditioning:
        """Inverse of :meth:`rows`."""
        import torch

        hidden = torch.stack([r.hidden for r in rows])
        mask = None if any(r.mask is None for r in rows) else torch.stack([r.mask for r in rows])
        if any(r.pooled is None for r in rows):
            return TextConditioning(hidden, None, mask)
        return TextConditioning(hidden, torch.stack([r.pooled for r in rows]), mask)


def _is_dtype(value: Any) -> bool:
    import torch

    return isinstance(value, torch.dtype)


@dataclass(frozen=True)
class TextSettings:
    """How captions become the U-Net's conditioning, set once when the model loads
    (``[model] clip_skip``, ``[dataset] max_token_length``) and read from the bundle by
    everything that encodes text: training, the text cache, preview images."""

    clip_skip: int = 1  # 1 = the last layer, 2 = the one before (kohya-compat.md §5.4)
    max_token_length: int = 75  # 75, 150 or 225 caption tokens
    weighted_captions: bool = False  # (word:1.2) prompt weights (training.prompt_weights)


@dataclass
class ModelBundle:
    """The parts of a loaded base model, how it reads text and what it predicts, and what
    the metadata needs to say about it. The one owner of the text-conditioning settings."""

    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    vae_scaling_factor: float
    model_name: str
    model_file: Path | None = None
    prediction_type: str = "epsilon"  # "v_prediction" with [model] v_parameterization
    text: TextSettings = field(default_factory=TextSettings)
    # Latents are vae_scaling_factor · (z − vae_shift_factor) (0 for SD; Flux's ae shifts).
    vae_shift_factor: float = 0.0
    family_state: Any = None  # what a family needs besides the models (Flux: its variant)

    @property
    def v_parameterization(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def impl(self) -> ModelFamily:
        """The family's object: how it encodes text, its objective, sampler, network."""
        from lora_core.family_registry import family

        return family(self.family)
