"""Stable Diffusion 1.x as a model family: one CLIP ViT-L/14 text encoder, a 768-wide U-Net.

Everything else an SD model answers alike (loading, objective, network, previews, checks) is
``families/sd/family.py``'s; this module holds SD 1.x's text path, which SD 2.x reuses.
No torch at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError
from lora_core.families.sd.family import StableDiffusionFamily
from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.models.clip_text import (
    final_layer_norm,
    join_windows,
    num_text_layers,
    split_into_windows,
    window_count,
)

if TYPE_CHECKING:
    import torch


class SD1Family(StableDiffusionFamily):
    """Stable Diffusion 1.x: one CLIP ViT-L/14 text encoder, ``clip_skip`` supported.

    clip_skip follows sd-scripts (kohya-compat.md §5.4): 1 (or None) uses the last layer's
    output (``last_hidden_state``, which already has the final LayerNorm); k > 1 uses
    ``hidden_states[-k]`` and then applies the text model's final LayerNorm. It applies to
    each 77-token window of a long caption separately, as in sd-scripts.

    ``max_token_length`` 150 / 225 lets a caption use 150 / 225 tokens instead of 75: the
    ids are cut into 2 / 3 windows (:func:`split_into_windows`), each encoded on its own
    (the encoder's position embeddings stop at 77), and the states joined again
    (:func:`join_windows`). With 75 both calls are exactly the plain 77-token encoder call.
    """

    name = "sd1"
    label = "SD1"
    words = "SD 1.x"

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        max_token_length = bundle.text.max_token_length
        tokenizer = bundle.tokenizers[0]
        n = window_count(tokenizer, max_token_length)
        # Truncation keeps the final EOS, so a too-long caption loses its tail tokens only.
        encoded = tokenizer(
            list(captions),
            padding="max_length",
            max_length=max_token_length + 2,
            truncation=True,
            return_tensors="pt",
        )
        if n == 1:
            return [encoded.input_ids]
        return [split_into_windows(encoded.input_ids, tokenizer, n)]

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
                    ) -> torch.Tensor:
        max_token_length = bundle.text.max_token_length
        text_encoder = bundle.text_encoders[0]
        window = bundle.tokenizers[0].model_max_length
        n = window_count(bundle.tokenizers[0], max_token_length)
        input_ids = input_ids_list[0].to(text_encoder.device)
        if input_ids.shape[-1] != n * window:
            raise ModelError(
                f"token ids of length {input_ids.shape[-1]} do not match max_token_length "
                f"{max_token_length} ({n * window} ids expected)",
                "tokenize and encode_text with the same bundle.text")
        skip = int(bundle.text.clip_skip)
        layers = num_text_layers(text_encoder)
        if not 1 <= skip <= layers:
            raise ModelError(
                f"clip_skip {skip} is out of range: this text encoder has {layers} layers",
                f"use a clip_skip between 1 and {layers} (1 = last layer, 2 = penultimate)",
            )
        # All windows of all captions in one encoder batch (B·n, 77).
        hidden = self._encode_windows(text_encoder, input_ids.reshape(-1, window), skip)
        if n == 1:
            return hidden
        return join_windows(hidden, input_ids.shape[0], n)

    @staticmethod
    def _encode_windows(text_encoder: Any, input_ids: torch.Tensor, skip: int) -> torch.Tensor:
        if skip == 1:
            return text_encoder(input_ids).last_hidden_state
        outputs = text_encoder(input_ids, output_hidden_states=True)
        return final_layer_norm(text_encoder)(outputs.hidden_states[-skip])

    def encode(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
               ) -> TextConditioning:
        return TextConditioning(self.encode_text(bundle, input_ids_list))


FAMILY = SD1Family()
