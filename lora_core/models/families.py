"""Model families (SD 1.x, SD 2.x, SDXL) behind one small interface.

Everything the trainer does differently per family goes through a ``Family``: how captions
become token ids, how token ids become the U-Net's text conditioning
(:class:`TextConditioning`: ``encoder_hidden_states`` and, for SDXL, the pooled text
embedding), and what extra conditioning the U-Net takes. SDXL lives in ``family_sdxl.py``.
The loaded parts travel together in a ``ModelBundle``. The training loop never asks "is
this SDXL?"; it asks the bundle's family.

This module loads nothing from disk (that is ``loading.py``) and names no LoRA keys (that is
``network/naming.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_core.errors import ModelError

if TYPE_CHECKING:
    import torch


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
    # A family's own training objective (``loss(latents, text, loss_weights, masks, model,
    # dtype)``); None: the diffusion (DDPM) objective of SD 1.x / 2.x / SDXL.
    objective: Any = None

    @property
    def v_parameterization(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def impl(self) -> Family:
        """The family's behaviour (text encoding, extra U-Net conditioning)."""
        return get_family(self.family)


class Family(Protocol):
    """What differs between SD1, SD2 and SDXL, as seen by the trainer."""

    name: str

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[torch.Tensor]:
        """Token ids, one LongTensor per tokenizer of the bundle: (B, n·77) holding the
        n = max_token_length / 75 encoder windows of each caption side by side
        (``bundle.text``)."""
        ...

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
                    ) -> torch.Tensor:
        """The U-Net's ``encoder_hidden_states`` for those token ids:
        (B, n·75 + 2, width), so 77 / 152 / 227 tokens long, at ``bundle.text.clip_skip``."""
        ...

    def encode(self, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
               ) -> TextConditioning:
        """Everything the U-Net needs from the text: ``encode_text``'s hidden states and,
        where the family has one, the pooled embedding."""
        ...

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        """Extra keyword arguments for the U-Net call (SDXL: ``added_cond_kwargs``).

        The trainer passes ``batch`` (the loader's dict), ``text`` (the batch's
        TextConditioning), ``device`` and ``dtype``; families without extra conditioning
        ignore them and return ``{}``.
        """
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


def window_count(tokenizer: Any, max_token_length: int) -> int:
    """How many encoder windows a caption of ``max_token_length`` tokens needs.

    A CLIP text encoder reads 77 positions: BOS, 75 tokens, EOS. Longer captions are cut
    into windows of 75 tokens (kohya-compat.md §5.4), so 75 / 150 / 225 give 1 / 2 / 3.
    """
    per_window = tokenizer.model_max_length - 2
    if max_token_length < per_window or max_token_length % per_window:
        raise ModelError(
            f"max_token_length {max_token_length} is not a multiple of the text encoder's "
            f"{per_window}-token window",
            f"set `[dataset] max_token_length` to {per_window}, {2 * per_window} or "
            f"{3 * per_window}")
    return max_token_length // per_window


def split_into_windows(input_ids: torch.Tensor, tokenizer: Any, n: int) -> torch.Tensor:
    """(B, n·75 + 2) token ids → (B, n·77): n windows of ``[BOS] + 75 tokens + [last]``.

    This is sd-scripts' long-prompt scheme (``TokenizeStrategy._get_input_ids``): every
    window starts with the caption's BOS and ends with the caption's final id (EOS, or PAD
    for a short caption when PAD ≠ EOS). Where PAD ≠ EOS (SD2 / SDXL tokenizers) two
    fix-ups keep each window a well-formed CLIP sequence: a window whose 75th token is a
    real word ends with EOS instead of PAD, and a window that starts ``BOS PAD`` (the
    caption ended in an earlier window) starts ``BOS EOS PAD…``. With PAD = EOS (SD1) both
    are no-ops.
    """
    import torch

    per_window = tokenizer.model_max_length - 2
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    bos, last = input_ids[:, :1], input_ids[:, -1:]
    windows = []
    for k in range(n):
        window = torch.cat([bos, input_ids[:, 1 + k * per_window:1 + (k + 1) * per_window],
                            last], dim=1)
        if pad != eos:
            ends_on_word = (window[:, -2] != eos) & (window[:, -2] != pad)
            window[ends_on_word, -1] = eos
            window[window[:, 1] == pad, 1] = eos
        windows.append(window)
    return torch.cat(windows, dim=1)


def join_windows(hidden: torch.Tensor, batch_size: int, n: int) -> torch.Tensor:
    """(B·n, 77, D) per-window states → (B, n·75 + 2, D), as sd-scripts re-assembles them.

    Keeps the first window's BOS state, the 75 token states of every window in order, and
    the last window's final (EOS/PAD) state; the inner BOS/EOS states are dropped. (The
    states-side "v2 pad fix-up" in sd-scripts compares token ids with the EOS *string*, so
    it never fires; there is nothing to reproduce.)
    """
    import torch

    per_window = hidden.shape[1]
    states = hidden.reshape(batch_size, n, per_window, hidden.shape[-1])
    middle = states[:, :, 1:-1].reshape(batch_size, n * (per_window - 2), hidden.shape[-1])
    return torch.cat([states[:, 0, :1], middle, states[:, -1, -1:]], dim=1)


class SD1Family:
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
    # Bucket sizes must be multiples of this (sd-scripts asserts 8 and warns below 64).
    bucket_step_multiple = 64

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

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        return {}


FAMILIES: dict[str, Family] = {"sd1": SD1Family()}


def encode_conditioning(family: Any, bundle: ModelBundle, input_ids_list: list[torch.Tensor]
                        ) -> TextConditioning:
    """``family.encode(...)``, or ``encode_text`` wrapped for a family that has no pooled
    output and no ``encode`` of its own."""
    encode = getattr(family, "encode", None)
    if encode is not None:
        return encode(bundle, input_ids_list)
    return TextConditioning(family.encode_text(bundle, input_ids_list))


_LAZY_FAMILIES = {"sd2": ("lora_core.models.family_sd2", "SD2Family"),
                  "sdxl": ("lora_core.models.family_sdxl", "SDXLFamily"),
                  "flux": ("lora_core.families.flux.family", "FluxFamily")}


def get_family(name: str) -> Family:
    """The Family called ``name``; ModelError if there is none."""
    if name not in FAMILIES and name in _LAZY_FAMILIES:
        # Imported on first use: those modules build on this module's helpers.
        import importlib

        module_name, class_name = _LAZY_FAMILIES[name]
        FAMILIES[name] = getattr(importlib.import_module(module_name), class_name)()
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ModelError(f"model family '{name}' is not supported yet",
                         f"supported families: {known}") from None


def family_of(bundle: ModelBundle) -> Family:
    """The Family of a loaded bundle (same as ``bundle.impl``)."""
    return get_family(bundle.family)
