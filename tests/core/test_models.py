"""Tests for lora_core.models: the generated tokenizer, the built-in tiny SD1 model, the SD1
family's text encoding, model loading and its errors, and the SD1.5 meta-device helper.

The tiny model is built once per module into a temporary cache; nothing touches the home
directory or the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_core.errors import ModelError
from lora_core.families.sd import builtin as sd_builtin
from lora_core.families.sd.loading import load_model
from lora_core.families.sd1 import SD1Family
from lora_core.family_registry import family
from lora_core.models import builtin
from lora_core.models.builtin import ensure_builtin
from lora_core.models.bundle import ModelBundle
from lora_core.models.clip_text import final_layer_norm
from lora_core.models.loading import describe_model, inspect_model
from lora_core.models.tokenizer_gen import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_vocab,
    learn_merges,
    write_tokenizer,
)
from tests.helpers.tiny_models import with_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMPONENT_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_TUI_CACHE_DIR", str(cache_root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_folder(cache_root: Path) -> Path:
    return ensure_builtin("tiny-sd1", cache_root)


@pytest.fixture(scope="module")
def bundle(tiny_folder: Path, cache_root: Path) -> ModelBundle:
    old = os.environ.get("LORA_TUI_CACHE_DIR")
    os.environ["LORA_TUI_CACHE_DIR"] = str(cache_root)
    try:
        return load_model("builtin:tiny-sd1", Path("."), torch.float32)
    finally:
        if old is None:
            del os.environ["LORA_TUI_CACHE_DIR"]
        else:
            os.environ["LORA_TUI_CACHE_DIR"] = old


# --- tokenizer ------------------------------------------------------------------------------


def test_merges_are_buildable_and_deterministic() -> None:
    merges = learn_merges()
    assert 200 <= len(merges) <= 2000
    assert merges == learn_merges()
    vocab = build_vocab(merges)
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab
    assert vocab[BOS_TOKEN] == len(vocab) - 2
    assert vocab[EOS_TOKEN] == len(vocab) - 1
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_tokenizer_folder_loads_pads_and_round_trips(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    size = write_tokenizer(tmp_path / "a")
    write_tokenizer(tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    tok = CLIPTokenizer.from_pretrained(tmp_path / "a", model_max_length=77)
    assert len(tok) == size
    for word in ("photo", "woman", "red", "hair", "masterpiece"):
        assert tok.tokenize(word) == [f"{word}</w>"]

    text = "A photo of a Woman,  with RED hair! 1girl, solo. zzqx émile"
    ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "".join(decoded.split()) == "".join(text.lower().split())

    long_ids = tok(["photo " * 100], padding="max_length", max_length=77, truncation=True,
                   return_tensors="pt").input_ids
    assert long_ids.shape == (1, 77) and long_ids[0, -1] == tok.eos_token_id


# --- built-in tiny model ------------------------------------------------------------------


def test_builtin_build_is_bit_identical(tiny_folder: Path, tmp_path: Path) -> None:
    other = ensure_builtin("tiny-sd1", tmp_path)
    assert other != tiny_folder
    for rel in COMPONENT_WEIGHTS:
        a, b = load_file(tiny_folder / rel), load_file(other / rel)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    for path in tiny_folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(tiny_folder)
            assert path.read_bytes() == (other / rel).read_bytes(), rel


def test_builtin_cache_is_reused(tiny_folder: Path, cache_root: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rebuild(folder: Path) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(sd_builtin, "_build_tiny_sd1", no_rebuild)
    assert ensure_builtin("tiny-sd1", cache_root) == tiny_folder
    assert ensure_builtin("tiny-sd1") == tiny_folder  # via LORA_TUI_CACHE_DIR
    assert tiny_folder.name == f"tiny-sd1-v{sd_builtin.BUILD_VERSION}"
    assert [p.name for p in tiny_folder.parent.iterdir()] == [tiny_folder.name]


def test_builtin_race_keeps_the_winner(tiny_folder: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    final = builtin.builtin_folder("tiny-sd1", tmp_path)

    def other_process_wins(folder: Path) -> None:
        shutil.copytree(tiny_folder, final)  # the other process renames first
        (folder / "model_index.json").write_text("{}")

    monkeypatch.setattr(sd_builtin, "_build_tiny_sd1", other_process_wins)
    assert ensure_builtin("tiny-sd1", tmp_path) == final
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert json.loads((final / "model_index.json").read_text())["_class_name"]


def test_unknown_builtin_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        ensure_builtin("huge-sd9", tmp_path)
    assert "builtin:huge-sd9" in info.value.message
    assert "builtin:tiny-sd1" in info.value.hint
    with pytest.raises(ModelError):
        load_model("builtin:nope", tmp_path, torch.float32)


def test_text_encoder_keys_have_text_model_prefix(tiny_folder: Path,
                                                  bundle: ModelBundle) -> None:
    saved = load_file(tiny_folder / "text_encoder" / "model.safetensors")
    assert saved and all(k.startswith("text_model.") for k in saved)
    loaded = bundle.text_encoders[0].state_dict()
    inner = {k.removeprefix("text_model."): v for k, v in saved.items()}
    assert inner.keys() == {k.removeprefix("text_model.") for k in loaded}
    for key, value in loaded.items():
        assert torch.equal(inner[key.removeprefix("text_model.")], value), key


def test_pipeline_loads_and_runs(tiny_folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a woman", num_inference_steps=2, guidance_scale=1.0, height=64,
               width=64, output_type="latent", generator=torch.Generator().manual_seed(0))
    latents = out.images
    assert latents.shape == (1, 4, 8, 8)
    assert torch.isfinite(latents).all()


# --- SD1 family ---------------------------------------------------------------------------


def test_bundle_fields(bundle: ModelBundle) -> None:
    assert bundle.family == "sd1" and bundle.impl is family("sd1")
    assert bundle.model_name == "tiny-sd1" and bundle.model_file is None
    assert bundle.vae_scaling_factor == pytest.approx(0.18215)
    assert bundle.prediction_type == "epsilon"
    cfg = bundle.noise_scheduler.config
    assert (cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule,
            cfg.clip_sample) == (1000, 0.00085, 0.012, "scaled_linear", False)
    assert bundle.impl.unet_extra_conditioning(bundle) == {}


@torch.no_grad()
def test_encode_text_and_clip_skip(bundle: ModelBundle) -> None:
    family = SD1Family()
    ids = family.tokenize(bundle, ["a photo of a woman with red hair", "cat"])
    assert len(ids) == 1 and ids[0].shape == (2, 77) and ids[0].dtype == torch.long
    h1 = family.encode_text(bundle, ids)
    h2 = family.encode_text(with_text(bundle, clip_skip=2), ids)
    assert h1.shape == h2.shape == (2, 77, 32)
    assert torch.equal(h1, family.encode_text(with_text(bundle, clip_skip=None), ids))
    assert not torch.allclose(h1, h2)
    te = bundle.text_encoders[0]
    hidden = te(ids[0], output_hidden_states=True).hidden_states
    assert torch.allclose(h2, final_layer_norm(te)(hidden[-2]))
    with pytest.raises(ModelError, match="clip_skip 3"):
        family.encode_text(with_text(bundle, clip_skip=3), ids)


@torch.no_grad()
def test_clip_skip_with_transformers4_layout(bundle: ModelBundle) -> None:
    """transformers 4.x keeps final_layer_norm under CLIPTextModel.text_model."""
    te = bundle.text_encoders[0]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model = te
            self.config = te.config

        @property
        def device(self) -> torch.device:
            return te.device

        def forward(self, *args, **kwargs):
            return self.text_model(*args, **kwargs)

    wrapped = dataclasses.replace(bundle, text_encoders=[Wrapped()])
    ids = SD1Family().tokenize(bundle, ["red hair"])
    assert torch.equal(SD1Family().encode_text(with_text(wrapped, clip_skip=2), ids),
                       SD1Family().encode_text(with_text(bundle, clip_skip=2), ids))


# --- loading errors -----------------------------------------------------------------------


def test_damaged_single_file_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        load_model("model.safetensors", tmp_path, torch.float32)
    assert str(ckpt) in info.value.message and "not a .safetensors file" in info.value.message
    assert "damaged" in info.value.hint


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_model("models/none", tmp_path, torch.float32)
    assert str(tmp_path / "models" / "none") in info.value.message


def test_hub_id_is_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_model("runwayml/stable-diffusion-v1-5", tmp_path, torch.float32)
    assert "runwayml/stable-diffusion-v1-5" in info.value.message
    assert "download" in info.value.message and "local folder" in info.value.hint


def test_sdxl_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline",
                    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path), Path("/"), torch.float32)
    assert str(tmp_path) in info.value.message and "SDXL" in info.value.message


def test_sd2_folder_is_detected_and_plain_folder_refused(tiny_folder: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(ModelError, match="model_index.json") as info:
        inspect_model(".", tmp_path)
    assert str(tmp_path) in info.value.message

    sd2 = tmp_path / "sd2"
    shutil.copytree(tiny_folder, sd2, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((sd2 / "text_encoder" / "config.json").read_text())
    (sd2 / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_size": 1024}))
    assert inspect_model("sd2", tmp_path).family == "sd2"  # told by the 1024-wide encoder
    with pytest.raises(ModelError, match="could not load the unet") as info:
        load_model("sd2", tmp_path, torch.float32)  # its weights were left out
    assert str(sd2) in info.value.message


def test_describe_model(tiny_folder: Path, tmp_path: Path) -> None:
    assert "SD1" in describe_model("builtin:tiny-sd1") and str(tiny_folder) in describe_model(
        "builtin:tiny-sd1")
    assert describe_model(str(tiny_folder)) == f"SD1 diffusers folder {tiny_folder}"
    assert describe_model("nothing/here", tmp_path).startswith("unusable:")


# --- SD1.5 architecture on the meta device ------------------------------------------------


def test_sd15_meta_counts() -> None:
    from tests.helpers.sd15_meta import build_sd15_meta

    unet, text_encoder = build_sd15_meta()
    kinds = [type(m).__name__ for m in unet.modules()]
    assert kinds.count("Transformer2DModel") == 16
    assert [type(m).__name__ for m in text_encoder.modules()].count("CLIPAttention") == 12
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in text_encoder.parameters()) == 123_060_480
    assert all(p.is_meta for p in unet.parameters())
    assert all(p.is_meta for p in text_encoder.parameters())
