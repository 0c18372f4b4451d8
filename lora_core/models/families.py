"""Model families (SD1 now; SD2 and SDXL later) behind one small interface.

Everything the trainer does differently per family goes through a ``Family``: how captions
become token ids, how token ids become the U-Net's ``encoder_hidden_states``, and what extra
conditioning the U-Net takes. The loaded parts travel together in a ``ModelBundle``. The
training loop never asks "is this SDXL?"; it asks the bundle's family.

This module loads nothing from disk (that is ``loading.py``) and names no LoRA keys (that is
``network/naming.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_core.errors import ModelError

if TYPE_CHECKING:
    import torch


@dataclass
class ModelBundle:
    """The parts of a loaded base model, and what the metadata needs to say about it."""

    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    vae_scaling_factor: float
    model_name: str
    model_file: Path | None = None
    prediction_type: str = "epsilon"

    @property
    def impl(self) -> Family:
        """The family's behaviour (text encoding, extra U-Net conditioning)."""
        return get_family(self.family)


class Family(Protocol):
    """What differs between SD1, SD2 and SDXL, as seen by the trainer."""

    name: str

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        """Token ids, one LongTensor (B, 77) per tokenizer of the bundle."""
        ...

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor],
                    clip_skip: int | None) -> torch.Tensor:
        """The U-Net's ``encoder_hidden_states`` for those token ids."""
        ...

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        """Extra keyword arguments for the U-Net call (SDXL: ``added_cond_kwargs``)."""
        ...


def final_layer_norm(text_encoder: Any) -> Any:
    """The CLIP text model's final LayerNorm, in transformers 4.x and 5.x.

    transformers 4.x wraps the layers in ``CLIPTextModel.text_model``; transformers >= 5.6 has
    no wrapper and keeps ``final_layer_norm`` on the model itself.
    """
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def num_text_layers(text_encoder: Any) -> int:
    return int(text_encoder.config.num_hidden_layers)


class SD1Family:
    """Stable Diffusion 1.x: one CLIP ViT-L/14 text encoder, ``clip_skip`` supported.

    clip_skip follows sd-scripts (kohya-compat.md §5.4): 1 (or None) uses the last layer's
    output (``last_hidden_state``, which already has the final LayerNorm); k > 1 uses
    ``hidden_states[-k]`` and then applies the text model's final LayerNorm.
    """

    name = "sd1"

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        tokenizer = bundle.tokenizers[0]
        encoded = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return [encoded.input_ids]

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor],
                    clip_skip: int | None) -> torch.Tensor:
        text_encoder = bundle.text_encoders[0]
        input_ids = input_ids_list[0].to(text_encoder.device)
        skip = 1 if clip_skip is None else int(clip_skip)
        layers = num_text_layers(text_encoder)
        if not 1 <= skip <= layers:
            raise ModelError(
                f"clip_skip {skip} is out of range: this text encoder has {layers} layers",
                f"use a clip_skip between 1 and {layers} (1 = last layer, 2 = penultimate)",
            )
        if skip == 1:
            return text_encoder(input_ids).last_hidden_state
        outputs = text_encoder(input_ids, output_hidden_states=True)
        return final_layer_norm(text_encoder)(outputs.hidden_states[-skip])

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        return {}


FAMILIES: dict[str, Family] = {"sd1": SD1Family()}


def get_family(name: str) -> Family:
    """The Family called ``name``; ModelError if there is none."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ModelError(f"model family '{name}' is not supported yet",
                         f"supported families: {known}") from None


def family_of(bundle: ModelBundle) -> Family:
    """The Family of a loaded bundle (same as ``bundle.impl``)."""
    return get_family(bundle.family)
