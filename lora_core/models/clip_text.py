"""CLIP text encoders as SD 1.x, SD 2.x and SDXL read captions: long captions in windows of
75 tokens (kohya-compat.md §5.4), the final LayerNorm for clip_skip, in transformers 4.x and
5.x. Shared model-part tools; which family uses which is the family's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_core.errors import ModelError

if TYPE_CHECKING:
    import torch


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
