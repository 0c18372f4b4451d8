"""SDXL as a model family: two text encoders, a pooled embedding and size conditioning.

What differs from SD 1.x (kohya-compat.md §10, sd-scripts' ``sdxl_train_network.py``):

* **Two text encoders.** TE1 is CLIP ViT-L/14 (``CLIPTextModel``), TE2 OpenCLIP ViT-bigG/14
  (``CLIPTextModelWithProjection``, its tokenizer pads with ``!``, id 0, not EOS). Each
  caption is tokenized by both. The context is the concatenation along features of TE1's
  and TE2's penultimate hidden states, both *without* the final LayerNorm:
  ``hidden_states[-2]`` (sd-scripts writes TE1's as ``hidden_states[11]``, the same layer
  of a 12-layer encoder). 768 + 1280 = 2048 for the real model.
* **Pooled text embedding.** TE2's ``last_hidden_state`` (after the final LayerNorm) at each
  caption's first EOS, through ``text_projection`` (1280). For long prompts (150 / 225
  tokens) every 77-token window is encoded and the *first* window's pool is used.
* **clip_skip** does not apply (SDXL was trained on the penultimate layers); a value above 1
  is ignored with a warning, as sd-scripts does.
* **Size / crop conditioning** ("micro-conditioning", Podell et al. 2023, SDXL §2.2,
  https://arxiv.org/abs/2307.01952): ``time_ids = (original_h, original_w, crop_top,
  crop_left, target_h, target_w)`` per sample. The U-Net embeds each number sinusoidally
  in 256 dimensions (:func:`size_embedding`: cos half, then sin half, max period 10000),
  6 × 256 = 1536, and adds ``[pooled, size embedding]`` (2816) through ``add_embedding``.
  diffusers' ``UNet2DConditionModel`` computes that embedding itself from ``time_ids``
  (``addition_embed_type = "text_time"``), so :meth:`SDXLFamily.unet_extra_conditioning`
  hands it the raw numbers. The loader puts ``original_size``, ``crop_top_left`` and
  ``target_size`` into every batch (``dataset/loader.py``).

Loading, objective, network and previews are SD's (``families/sd/family.py``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError
from lora_core.families.sd.family import StableDiffusionFamily
from lora_core.families.sd.unet_layout import sai_renamer
from lora_core.models.bundle import ModelBundle, TextConditioning
from lora_core.models.clip_text import join_windows, split_into_windows, window_count
from lora_core.network.blocks import SDXL_BLOCKS
from lora_core.network.naming import LoraNaming

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SIZE_EMBEDDING_DIM = 256  # per number of time_ids (SDXL's addition_time_embed_dim)


def size_embedding(values: torch.Tensor, dim: int = SIZE_EMBEDDING_DIM,
                   max_period: float = 10000.0) -> torch.Tensor:
    """SDXL's embedding of ``time_ids`` (B, k) → (B, k·dim), written out for reference and
    tests (the U-Net computes it itself).

    For each number x: with ``half = dim / 2`` and ``f_i = max_period^(-i / half)``,
    ``[cos(x f_0) … cos(x f_{half-1}), sin(x f_0) … sin(x f_{half-1})]`` — the original
    ``timestep_embedding`` of SAI's code, which diffusers reproduces with
    ``flip_sin_to_cos=True, freq_shift=0``.
    """
    import torch

    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float().reshape(-1, 1) * freqs.to(values.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.reshape(values.shape[0], -1)


def time_ids_of(batch: dict[str, Any]) -> torch.Tensor:
    """(B, 6) float ``time_ids`` from the loader's ``original_size`` (h, w),
    ``crop_top_left`` (top, left) and ``target_size`` (h, w), each (B, 2)."""
    import torch

    try:
        parts = [torch.as_tensor(batch[key]) for key in
                 ("original_size", "crop_top_left", "target_size")]
    except KeyError as exc:
        raise ModelError(f"the batch has no {exc.args[0]!r}, which SDXL's size "
                         "conditioning needs",
                         "build batches with dataset.loader (it adds the sizes)") from None
    return torch.cat([p.reshape(-1, 2) for p in parts], dim=1).float()


class SDXLFamily(StableDiffusionFamily):
    """Stable Diffusion XL base: see the module docstring for the maths."""

    name = "sdxl"
    label = "SDXL"
    words = "SDXL"
    sd_scripts_script = "sdxl_train_network.py"
    # sd-scripts' SDXL scripts assert bucket_reso_steps % 32 == 0.
    bucket_step_multiple = 32
    # lora_te1 / lora_te2, and U-Net names in SAI's layout (sd-scripts trains that U-Net).
    naming = LoraNaming(numbered_text_encoders=True, unet_renamer=sai_renamer)
    blocks = SDXL_BLOCKS
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"

    def base_model_version(self, v_parameterization: bool) -> str:
        return "sdxl_base_v1-0"

    def modelspec_architecture(self, v_parameterization: bool) -> str:
        return "stable-diffusion-xl-v1-base/lora"

    def clip_skip_note(self, clip_skip: int) -> str | None:
        return "`[model] clip_skip` is ignored for SDXL models (sd-scripts ignores it too)"

    def __init__(self) -> None:
        self._warned_clip_skip = False

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        """[TE1 ids, TE2 ids], each (B, n·77) as in :meth:`SD1Family.tokenize`; TE2's
        padding is its own PAD (id 0), and the window fix-ups keep each window ending in
        EOS (``families.split_into_windows``)."""
        self._check_bundle(bundle)
        max_token_length = bundle.text.max_token_length
        ids = []
        for tokenizer in bundle.tokenizers:
            n = window_count(tokenizer, max_token_length)
            encoded = tokenizer(list(captions), padding="max_length",
                                max_length=max_token_length + 2, truncation=True,
                                return_tensors="pt").input_ids
            ids.append(encoded if n == 1 else split_into_windows(encoded, tokenizer, n))
        return ids

    def encode(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
               ) -> TextConditioning:
        """Hidden states (B, n·75 + 2, width1 + width2) and pooled (B, projection_dim)."""
        import torch

        self._check_bundle(bundle)
        clip_skip, max_token_length = bundle.text.clip_skip, bundle.text.max_token_length
        if clip_skip is not None and clip_skip > 1 and not self._warned_clip_skip:
            self._warned_clip_skip = True
            log.warning("clip_skip %d is ignored for SDXL (it always uses the penultimate "
                        "layers of both text encoders), as in sd-scripts", clip_skip)
        te1, te2 = bundle.text_encoders
        tok1, tok2 = bundle.tokenizers
        window = tok1.model_max_length
        n = window_count(tok1, max_token_length)
        ids1, ids2 = (ids.to(te.device) for ids, te in zip(input_ids_list, (te1, te2),
                                                            strict=True))
        for ids in (ids1, ids2):
            if ids.shape[-1] != n * window:
                raise ModelError(
                    f"token ids of length {ids.shape[-1]} do not match max_token_length "
                    f"{max_token_length} ({n * window} ids expected)",
                    "tokenize and encode with the same bundle.text")
        batch_size = ids1.shape[0]
        windows1, windows2 = ids1.reshape(-1, window), ids2.reshape(-1, window)
        hidden1 = te1(windows1, output_hidden_states=True).hidden_states[-2]
        out2 = te2(windows2, output_hidden_states=True)
        hidden2 = out2.hidden_states[-2]
        pooled = self._pool(te2, out2.last_hidden_state, windows2, tok2.eos_token_id)
        if n > 1:
            hidden1 = join_windows(hidden1, batch_size, n)
            hidden2 = join_windows(hidden2, batch_size, n)
            pooled = pooled.reshape(batch_size, n, -1)[:, 0]  # the first window's pool
        return TextConditioning(torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1),
                                pooled)

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
                    ) -> torch.Tensor:
        return self.encode(bundle, input_ids_list).hidden

    @staticmethod
    def _pool(te2: Any, last_hidden: torch.Tensor, input_ids: torch.Tensor,
              eos_token_id: int) -> torch.Tensor:
        """``text_projection`` of the state at each row's first EOS (sd-scripts'
        ``pool_workaround``; independent of what the config says the EOS id is)."""
        import torch

        eos_index = (input_ids == eos_token_id).int().argmax(dim=1)
        states = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device),
                             eos_index]
        projection = te2.text_projection
        return projection(states.to(projection.weight.dtype))

    def unet_extra_conditioning(self, bundle: ModelBundle, *, batch: dict[str, Any] | None = None,
                                text: TextConditioning | None = None,
                                device: Any = None, dtype: Any = None,
                                **_: Any) -> dict[str, Any]:
        """``{"added_cond_kwargs": {"text_embeds": pooled (B, P), "time_ids": (B, 6)}}``."""
        if batch is None or text is None or text.pooled is None:
            raise ModelError("SDXL's U-Net needs the batch's sizes and the pooled text "
                             "embedding",
                             "call unet_extra_conditioning(bundle, batch=..., text=...) with "
                             "the TextConditioning from encode()")
        pooled = text.pooled
        device = device if device is not None else pooled.device
        dtype = dtype if dtype is not None else pooled.dtype
        time_ids = time_ids_of(batch).to(device, dtype)
        if time_ids.shape[0] != pooled.shape[0]:
            raise ModelError(f"{time_ids.shape[0]} size entries for {pooled.shape[0]} captions",
                             "build the batch's sizes and captions from the same items")
        return {"added_cond_kwargs": {"text_embeds": pooled.to(device, dtype),
                                      "time_ids": time_ids}}

    @staticmethod
    def _check_bundle(bundle: ModelBundle) -> None:
        if len(bundle.text_encoders) != 2 or len(bundle.tokenizers) != 2:
            raise ModelError(
                f"an SDXL model needs two text encoders and two tokenizers; "
                f"'{bundle.model_name}' has {len(bundle.text_encoders)} and "
                f"{len(bundle.tokenizers)}",
                "load an SDXL checkpoint or folder (with text_encoder_2 / tokenizer_2)")


FAMILY = SDXLFamily()
