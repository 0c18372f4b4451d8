"""Long-prompt text encoding (max_token_length 150 / 225) against kohya-compat.md §5.4.

Runs the SD1 family on the built-in tiny model (32-wide CLIP, generated tokenizer), built
once per module into a temporary cache. Nothing touches the network or the home folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from lora_core.errors import ModelError
from lora_core.families.sd.loading import load_model
from lora_core.families.sd1 import SD1Family
from lora_core.models.builtin import ensure_builtin
from lora_core.models.bundle import ModelBundle
from lora_core.models.clip_text import final_layer_norm
from tests.helpers.tiny_models import with_text

WORDS = ("red", "hair", "blue", "eyes", "smile", "woman", "dress", "hat", "forest", "flower",
         "cat", "dog", "portrait", "photo", "light", "shadow")


def words(count: int, offset: int = 0) -> str:
    """``count`` single-token words of the tiny vocabulary."""
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(count))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("LORA_TUI_CACHE_DIR")
    os.environ["LORA_TUI_CACHE_DIR"] = str(cache)
    try:
        ensure_builtin("tiny-sd1", cache)
        return load_model("builtin:tiny-sd1", Path("."), torch.float32)
    finally:
        if old is None:
            del os.environ["LORA_TUI_CACHE_DIR"]
        else:
            os.environ["LORA_TUI_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def v2_bundle(bundle: ModelBundle) -> ModelBundle:
    """The same model with an SD2-style tokenizer: PAD is "!" (id 0), not EOS."""
    tokenizer = bundle.tokenizers[0]
    v2_tokenizer = type(tokenizer).from_pretrained(
        tokenizer.name_or_path, model_max_length=77, pad_token="!", local_files_only=True)
    assert v2_tokenizer.pad_token_id == 0 != v2_tokenizer.eos_token_id
    return dataclasses.replace(bundle, tokenizers=[v2_tokenizer])


def plain_tokens(bundle: ModelBundle, caption: str) -> list[int]:
    """The caption's token ids without BOS/EOS, untruncated."""
    return bundle.tokenizers[0](caption, add_special_tokens=False, verbose=False).input_ids


def test_words_are_single_tokens(bundle: ModelBundle) -> None:
    assert len(plain_tokens(bundle, words(100))) == 100


# --- shapes and the 75-token case ------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize(("max_tokens", "ids_len", "states_len"),
                         [(75, 77, 77), (150, 154, 152), (225, 231, 227)])
def test_shapes(bundle: ModelBundle, max_tokens: int, ids_len: int, states_len: int) -> None:
    family = SD1Family()
    ids = family.tokenize(with_text(bundle, max_token_length=max_tokens), [words(10), words(200)])
    assert len(ids) == 1 and ids[0].shape == (2, ids_len) and ids[0].dtype == torch.long
    for clip_skip in (None, 2):
        reading = with_text(bundle, clip_skip=clip_skip, max_token_length=max_tokens)
        hidden = family.encode_text(reading, ids)
        assert hidden.shape == (2, states_len, 32)


@torch.no_grad()
def test_75_tokens_is_the_plain_encoder_call(bundle: ModelBundle) -> None:
    family, tokenizer, te = SD1Family(), bundle.tokenizers[0], bundle.text_encoders[0]
    captions = [words(5), words(120)]
    ids = family.tokenize(bundle, captions)
    plain = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
    assert torch.equal(ids[0], plain)
    assert torch.equal(family.tokenize(bundle, captions)[0], plain)
    assert torch.equal(family.encode_text(bundle, ids), te(plain).last_hidden_state)
    skipped = final_layer_norm(te)(te(plain, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(family.encode_text(with_text(bundle, clip_skip=2), ids), skipped)


# --- what reaches the encoder ----------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_tokens_after_75_reach_the_encoder(bundle: ModelBundle, clip_skip: int) -> None:
    family = SD1Family()
    head = words(75)
    captions = [head + " " + words(40, 3), head + " " + words(40, 7)]

    long_ids = family.tokenize(with_text(bundle, max_token_length=150), captions)
    long_states = family.encode_text(
        with_text(bundle, clip_skip=clip_skip, max_token_length=150), long_ids)
    # The first window sees the same 75 tokens: identical states up to the boundary.
    assert torch.equal(long_states[0, :76], long_states[1, :76])
    # Tokens 76+ differ, and so do the second window's states.
    assert not torch.allclose(long_states[0, 76:151], long_states[1, 76:151])

    short_states = family.encode_text(with_text(bundle, clip_skip=clip_skip),
                                      family.tokenize(bundle, captions))
    assert torch.equal(short_states[0], short_states[1])  # 75 cuts the difference off


@torch.no_grad()
def test_windows_hold_bos_and_eos_at_their_ends(bundle: ModelBundle) -> None:
    tokenizer = bundle.tokenizers[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    caption = words(100)
    tokens = plain_tokens(bundle, caption)
    ids = SD1Family().tokenize(with_text(bundle, max_token_length=150), [caption, words(10)])[0]

    first, second = ids[:, :77], ids[:, 77:]
    assert first[0].tolist() == [bos] + tokens[:75] + [eos]
    assert second[0].tolist() == [bos] + tokens[75:] + [eos] * 51
    # A short caption: its second window is BOS followed by padding (PAD = EOS for SD1).
    assert second[1].tolist() == [bos] + [eos] * 76
    assert first[1, 11].item() == eos and first[1, 10].item() != eos


@torch.no_grad()
def test_a_caption_longer_than_max_token_length_is_cut(bundle: ModelBundle) -> None:
    tokenizer = bundle.tokenizers[0]
    caption = words(300)
    ids = SD1Family().tokenize(with_text(bundle, max_token_length=225), [caption])[0][0]
    tokens = plain_tokens(bundle, caption)
    for k in range(3):
        window = ids[77 * k:77 * (k + 1)].tolist()
        assert window == [tokenizer.bos_token_id] + tokens[75 * k:75 * (k + 1)] + [
            tokenizer.eos_token_id]


@torch.no_grad()
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_states_are_reassembled_from_each_window(bundle: ModelBundle, clip_skip: int) -> None:
    """BOS state of window 1, the 75 token states of every window, final state of the last."""
    te = bundle.text_encoders[0]

    def encoder(window: torch.Tensor) -> torch.Tensor:
        out = te(window, output_hidden_states=True)
        if clip_skip == 1:
            return out.last_hidden_state
        return final_layer_norm(te)(out.hidden_states[-clip_skip])

    family = SD1Family()
    ids = family.tokenize(with_text(bundle, max_token_length=225), [words(160), words(30, 5)])
    states = family.encode_text(with_text(bundle, clip_skip=clip_skip, max_token_length=225), ids)
    windows = [encoder(ids[0][:, 77 * k:77 * (k + 1)]) for k in range(3)]

    torch.testing.assert_close(states[:, 0], windows[0][:, 0])
    for k in range(3):
        torch.testing.assert_close(states[:, 1 + 75 * k:76 + 75 * k], windows[k][:, 1:76])
    torch.testing.assert_close(states[:, -1], windows[2][:, -1])
    # The inner windows' final states are not used: window 1's EOS state is not at 76.
    assert not torch.allclose(states[:, 76], windows[0][:, 76])


# --- SD2-style tokenizers (PAD ≠ EOS) --------------------------------------------------------


@torch.no_grad()
def test_pad_tokenizer_fix_ups(v2_bundle: ModelBundle) -> None:
    tokenizer = v2_bundle.tokenizers[0]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    tokens = plain_tokens(v2_bundle, words(100))
    long = with_text(v2_bundle, max_token_length=150)
    ids = SD1Family().tokenize(long, [words(100), words(10)])[0]

    # Window 1 ends on a real word: its last id becomes EOS (the caption's last id is PAD).
    assert ids[0, :77].tolist() == [bos] + tokens[:75] + [eos]
    assert ids[0, 77:].tolist() == [bos] + tokens[75:] + [eos] + [pad] * 50
    # Window 2 of a short caption starts "BOS PAD": it becomes "BOS EOS PAD ...".
    assert ids[1, 77:].tolist() == [bos, eos] + [pad] * 75
    # Window 1 of the short caption is untouched: "... EOS PAD ... PAD".
    assert ids[1, 11:13].tolist() == [eos, pad] and ids[1, 76].item() == pad

    states = SD1Family().encode_text(long, [ids])
    assert states.shape == (2, 152, 32)


# --- errors ----------------------------------------------------------------------------------


def test_unsupported_lengths_are_refused(bundle: ModelBundle) -> None:
    family = SD1Family()
    with pytest.raises(ModelError, match="max_token_length 100") as info:
        family.tokenize(with_text(bundle, max_token_length=100), ["red"])
    assert "150" in info.value.hint
    ids = family.tokenize(with_text(bundle, max_token_length=150), ["red"])
    with pytest.raises(ModelError, match="do not match max_token_length 75"):
        family.encode_text(bundle, ids)  # read with 75 tokens
