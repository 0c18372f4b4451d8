"""SD 2.x as a model family: SD 1.x's text path with SD 2.x's encoder and tokenizer.

What differs from SD 1.x lies in the *parts* of the bundle, not in the maths, so this family
delegates the text path to :class:`~lora_core.families.sd1.SD1Family` and adds checks
(kohya-compat.md §5.4, §6.1, §11):

* **Text encoder.** OpenCLIP ViT-H/14 as a transformers ``CLIPTextModel`` with ``gelu`` and
  **23** layers: SD 2.x conditions on the penultimate layer of the 24-layer OpenCLIP model,
  so the converted encoder ends there and its ``last_hidden_state`` (after the final
  LayerNorm) is exactly SD 2.x's conditioning. 23 × 6 = 138 LoRA modules.
* **Tokenizer.** SD 2.x's pads with ``"!"`` (id 0), not with EOS. The long-prompt windows
  need sd-scripts' two fix-ups for that case (a window whose last token is a word ends with
  EOS; a window that starts ``BOS PAD`` starts ``BOS EOS PAD…``); ``split_into_windows``
  applies them whenever PAD ≠ EOS. A tokenizer padding with EOS (the SD 1.x one) is
  refused, since a model trained on ``!`` padding would get other conditioning.
* **clip_skip** works exactly as for SD 1.x (``hidden_states[-k]``, then the final
  LayerNorm), counted on the 23-layer encoder, so ``clip_skip 2`` is OpenCLIP layer 22 of
  24. sd-scripts keeps that behaviour but warns that clip_skip with ``--v2`` "will be
  unexpected" (SD 2.x already skips OpenCLIP's last layer); we keep it too, and warn once
  (:func:`clip_skip_warning` gives the text for the wizard / ``lora-train check``).
* **No extra U-Net conditioning.** ``v_parameterization`` (SD 2.x 768-v) is a setting, not a
  family: weights cannot tell it (the target and min-SNR weights live in
  ``training/loss.py``; metadata ``sd_v2`` / ``sd_v2_v`` below).

Loading, objective, network and previews are SD's (``families/sd/family.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lora_core.errors import ModelError
from lora_core.families.sd.family import StableDiffusionFamily
from lora_core.families.sd1 import SD1Family
from lora_core.models.bundle import ModelBundle, TextConditioning

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SD2_TOKENIZER_REPO = "stabilityai/stable-diffusion-2"  # subfolder "tokenizer" (§5.4)
SD2_PAD_TOKEN = "!"


def clip_skip_warning(clip_skip: int | None) -> str | None:
    """The warning sd-scripts gives for clip_skip with an SD 2.x model, or None."""
    if clip_skip is None or clip_skip <= 1:
        return None
    return (f"clip_skip {clip_skip} with an SD 2.x model is unusual: SD 2.x already uses "
            "the penultimate layer of its OpenCLIP text encoder, so clip_skip "
            f"{clip_skip} skips {clip_skip - 1} more (sd-scripts warns the same and keeps it)")


class SD2Family(StableDiffusionFamily):
    """Stable Diffusion 2.x (512-base and 768-v): see the module docstring."""

    name = "sd2"
    label = "SD2"
    words = "SD 2.x"
    v2 = True  # ss_v2 = True; `[model] v2` must not say false

    def modelspec_architecture(self, v_parameterization: bool) -> str:
        return ("stable-diffusion-v2-768-v/lora" if v_parameterization
                else "stable-diffusion-v2-512/lora")

    def clip_skip_note(self, clip_skip: int) -> str | None:
        return clip_skip_warning(clip_skip)

    def __init__(self) -> None:
        self._text = SD1Family()
        self._warned_clip_skip = False

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        """[ids (B, n·77)] as SD 1.x's, with PAD = ``!`` and the window fix-ups."""
        check_sd2_tokenizer(bundle)
        return self._text.tokenize(bundle, captions)

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
                    ) -> torch.Tensor:
        """``encoder_hidden_states`` (B, n·75 + 2, 1024 for the real model)."""
        warning = clip_skip_warning(bundle.text.clip_skip)
        if warning and not self._warned_clip_skip:
            self._warned_clip_skip = True
            log.warning("%s", warning)
        return self._text.encode_text(bundle, input_ids_list)

    def encode(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
               ) -> TextConditioning:
        """Hidden states only: SD 2.x has no pooled text embedding."""
        return TextConditioning(self.encode_text(bundle, input_ids_list))

def check_sd2_tokenizer(bundle: ModelBundle) -> None:
    """ModelError unless the bundle has one tokenizer that pads with something else than
    EOS (SD 2.x's pads with ``!``)."""
    if len(bundle.tokenizers) != 1 or len(bundle.text_encoders) != 1:
        raise ModelError(
            f"an SD 2.x model has one text encoder and one tokenizer; '{bundle.model_name}' "
            f"has {len(bundle.text_encoders)} and {len(bundle.tokenizers)}",
            "for a model with two text encoders choose SDXL; otherwise reload the model")
    tokenizer = bundle.tokenizers[0]
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ModelError(
            f"the tokenizer of the SD 2.x model '{bundle.model_name}' pads with EOS "
            f"({tokenizer.eos_token!r}); SD 2.x's tokenizer pads with {SD2_PAD_TOKEN!r}, so "
            "this looks like the SD 1.x tokenizer",
            f"use the tokenizer of {SD2_TOKENIZER_REPO} (subfolder tokenizer), e.g. by "
            "pointing `[model] tokenizer_cache_dir` at a copy of it")


FAMILY = SD2Family()
