"""The on-disk text-encoder output cache (``cache_text_encoder_outputs_to_disk``,
kohya-compat.md §10).

Text-encoder calls are counted by wrapping each encoder's ``forward``, so "reused" means
"no encoder ran", not "the result looked the same".
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_core import paths
from lora_core.checks import scan_profile
from lora_core.dataset.plan import make_plan
from lora_core.models.bundle import TextSettings
from lora_core.saving import text_cache
from lora_core.training.conditioning import (
    LiveTextEncoder,
    build_cached_text_encoder,
    distinct_captions,
)
from tests.core.dataset_helpers import make_image, profile_for, snapshot
from tests.helpers.tiny_models import with_text

CPU = torch.device("cpu")
CAPTIONS = ["a red cat", "a blue dog", "a red cat"]  # two distinct captions


@pytest.fixture(scope="module", params=["tiny-sd1", "tiny-sdxl"])
def bundle(request):
    from lora_core.families.sd.loading import load_model

    return load_model(f"builtin:{request.param}", Path.cwd(), torch.float32)


def dataset(root: Path) -> Path:
    train = root / "data" / "train"
    for i, caption in enumerate(CAPTIONS):
        make_image(train / "1_thing" / f"img{i}.png", color=(40 * i, 80, 120))
        (train / "1_thing" / f"img{i}.txt").write_text(caption, encoding="utf-8")
    return train


def plan_of(train: Path, **overrides):
    profile = profile_for(train, resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                          train_batch_size=2, **overrides)
    return make_plan(profile, scan_profile(profile))


class EncoderCalls:
    """Counts the captions each text encoder is asked to encode (rows of its input ids)."""

    def __init__(self, bundle, monkeypatch):
        self.rows = 0
        for encoder in bundle.text_encoders:
            original = encoder.forward

            def forward(input_ids, *args, _original=original, **kwargs):
                self.rows += input_ids.shape[0]
                return _original(input_ids, *args, **kwargs)

            monkeypatch.setattr(encoder, "forward", forward)


def live(bundle, captions, clip_skip=1):
    with torch.no_grad():
        return LiveTextEncoder(with_text(bundle, clip_skip=clip_skip), CPU).conditioning(
            {"captions": captions}, False)


def cache_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_disk_cache_equals_live_encoding(tmp_path, bundle):
    plan = plan_of(dataset(tmp_path))
    root = tmp_path / "cache"
    cached = build_cached_text_encoder(plan, bundle, CPU, batch_size=1, to_disk=True, root=root)
    assert cached.cache == {}  # nothing kept in memory: rows come from the files
    batch = ["a blue dog", "a red cat", "a blue dog"]
    got, want = cached.conditioning({"captions": batch}, False), live(bundle, batch)
    torch.testing.assert_close(got.hidden, want.hidden)
    if bundle.family == "sdxl":
        torch.testing.assert_close(got.pooled, want.pooled)
    else:
        assert got.pooled is None and want.pooled is None
    files = cache_files(root)
    assert len(files) == 2  # one per distinct caption, in one fingerprint folder
    assert len({f.parent for f in files}) == 1
    with safe_open(str(files[0]), framework="pt") as handle:
        expected = {"hidden_state", "pool"} if bundle.family == "sdxl" else {"hidden_state"}
        assert set(handle.keys()) == expected
        assert handle.metadata()["caption"] in CAPTIONS


def test_valid_files_are_reused_without_encoding(tmp_path, bundle, monkeypatch):
    plan = plan_of(dataset(tmp_path))
    root = tmp_path / "cache"
    first = build_cached_text_encoder(plan, bundle, CPU, to_disk=True, root=root)
    before = {f: f.stat().st_mtime_ns for f in cache_files(root)}
    calls = EncoderCalls(bundle, monkeypatch)
    progress = []
    second = build_cached_text_encoder(plan, bundle, CPU, to_disk=True, root=root,
                                       progress=lambda done, total: progress.append(
                                           (done, total)))
    assert calls.rows == 0
    assert progress == [(2, 2)]
    assert {f: f.stat().st_mtime_ns for f in cache_files(root)} == before  # not rewritten
    batch = {"captions": ["a red cat", "a blue dog"]}
    torch.testing.assert_close(second.hidden_states(batch, False),
                               first.hidden_states(batch, False))
    assert calls.rows == 0  # reading a batch encodes nothing either


def test_clip_skip_or_encoder_change_rebuilds(tmp_path, bundle, monkeypatch):
    plan = plan_of(dataset(tmp_path))
    root = tmp_path / "cache"
    build_cached_text_encoder(plan, bundle, CPU, to_disk=True, root=root)
    # SDXL warns once that it ignores clip_skip: undo that at teardown for later tests.
    monkeypatch.setattr(bundle.impl, "_warned_clip_skip",
                        getattr(bundle.impl, "_warned_clip_skip", False), raising=False)
    calls = EncoderCalls(bundle, monkeypatch)
    skipped = build_cached_text_encoder(plan, with_text(bundle, clip_skip=2), CPU, to_disk=True,
                                        root=root)
    assert calls.rows > 0
    batch = ["a red cat", "a blue dog"]
    torch.testing.assert_close(skipped.conditioning({"captions": batch}, False).hidden,
                               live(bundle, batch, clip_skip=2).hidden)
    assert len({f.parent for f in cache_files(root)}) == 2  # another fingerprint folder

    changed = copy.deepcopy(bundle)
    with torch.no_grad():
        next(changed.text_encoders[0].parameters()).view(-1)[0] += 1e-3
    counted = EncoderCalls(changed, monkeypatch)
    build_cached_text_encoder(plan, changed, CPU, to_disk=True, root=root)
    assert counted.rows > 0
    assert len({f.parent for f in cache_files(root)}) == 3


def test_fingerprint_covers_tokenizer_and_token_length(bundle):
    def fingerprint(tokenizers=bundle.tokenizers, max_token_length=75, family=bundle.family):
        return text_cache.text_encoder_fingerprint(family, bundle.text_encoders, tokenizers,
                                                   TextSettings(1, max_token_length))

    base = fingerprint()
    assert fingerprint() == base  # deterministic
    assert fingerprint(max_token_length=150) != base
    assert fingerprint(family="other") != base
    tokenizer = copy.deepcopy(bundle.tokenizers[0])
    tokenizer.add_tokens(["<brand-new-token>"])
    assert fingerprint([tokenizer, *bundle.tokenizers[1:]]) != base


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes"])
def test_damaged_file_is_rebuilt(tmp_path, bundle, monkeypatch, damage):
    plan = plan_of(dataset(tmp_path))
    root = tmp_path / "cache"
    build_cached_text_encoder(plan, bundle, CPU, to_disk=True, root=root)
    victim = cache_files(root)[0]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[:len(data) // 2])
    else:  # same length, a few bytes of tensor data changed
        victim.write_bytes(data[:-16] + bytes(b ^ 0xFF for b in data[-16:]))
    calls = EncoderCalls(bundle, monkeypatch)
    rebuilt = build_cached_text_encoder(plan, bundle, CPU, to_disk=True, root=root)
    # Only the damaged caption is encoded again (once per text encoder).
    assert calls.rows == len(bundle.text_encoders)
    batch = ["a red cat", "a blue dog"]
    got = rebuilt.conditioning({"captions": batch}, False)
    torch.testing.assert_close(got.hidden, live(bundle, batch).hidden)
    with safe_open(str(victim), framework="pt") as handle:  # the file is whole again
        caption = handle.metadata()["caption"]
        torch.testing.assert_close(handle.get_tensor("hidden_state"),
                                   live(bundle, [caption]).hidden[0])


def test_nothing_is_written_outside_the_cache_root(tmp_path, bundle, monkeypatch):
    monkeypatch.setenv("LORA_TUI_CACHE_DIR", str(tmp_path / "lora-cache"))
    train = dataset(tmp_path)
    plan = plan_of(train)
    before = snapshot(tmp_path / "data")
    build_cached_text_encoder(plan, bundle, CPU, to_disk=True)
    assert snapshot(tmp_path / "data") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "lora-cache"]
    expected_root = paths.cache_dir() / "text_encoder_outputs"
    files = cache_files(tmp_path)
    assert len(files) == len(distinct_captions(plan)) == 2
    assert all(f.parent.parent == expected_root for f in files)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_in_memory_cache_writes_no_file(tmp_path, bundle, monkeypatch):
    monkeypatch.setenv("LORA_TUI_CACHE_DIR", str(tmp_path / "lora-cache"))
    plan = plan_of(dataset(tmp_path))
    cached = build_cached_text_encoder(plan, bundle, CPU)
    assert set(cached.cache) == {"a red cat", "a blue dog"}
    assert not (tmp_path / "lora-cache").exists()


def test_the_checks_refuse_caching_when_the_text_encoder_trains(tmp_path):
    """Refused before anything loads (checks.rules), not by the trainer after caching."""
    from lora_core.checks import check_profile
    from lora_core.checks.rules import profile_rules

    train = dataset(tmp_path)
    profile = profile_for(train, resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                          cache_text_encoder_outputs_to_disk=True,
                          network_train_unet_only=False)
    found = [p for p in profile_rules(profile) if p.is_error and p.section == "dataset"]
    assert [p.field for p in found] == [("dataset", "cache_text_encoder_outputs_to_disk")]
    assert "network_train_unet_only" in found[0].message
    profile.network.network_train_unet_only = True
    assert not [p for p in check_profile(profile).errors if p.section == "dataset"]


def test_a_family_s_own_settings_are_in_the_fingerprint():
    """Flux's T5 token count and mask setting change its states: they are fingerprinted;
    a family with none (SD) keeps the fingerprint it had before they were."""
    from lora_core.saving.text_cache import text_encoder_fingerprint

    def fingerprint(settings):
        return text_encoder_fingerprint("flux", [], [], TextSettings(), settings)

    masked = fingerprint({"t5_max_length": 512, "apply_t5_attn_mask": True})
    assert masked != fingerprint({"t5_max_length": 512, "apply_t5_attn_mask": False})
    assert masked != fingerprint({"t5_max_length": 256, "apply_t5_attn_mask": True})
    assert fingerprint({}) == fingerprint(None) == text_encoder_fingerprint(
        "flux", [], [], TextSettings())
