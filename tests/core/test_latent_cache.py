"""Latent caching (kohya-compat.md §4.5) and text-encoder output caching (§10).

The built-in tiny SD1 model (a real diffusers VAE and CLIP text encoder) is loaded once for
the module. VAE calls are counted by wrapping ``vae.encode``, so "reused" means "the VAE
never ran", not "the result looked the same".
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lora_core.checks import scan_profile
from lora_core.dataset.images import flip_horizontal, load_training_image
from lora_core.dataset.loader import pixels_to_tensor
from lora_core.dataset.plan import make_plan
from lora_core.errors import DatasetError
from lora_core.saving import latent_cache
from lora_core.training.conditioning import (
    CachedLatents,
    LiveTextEncoder,
    build_cached_latents,
    build_cached_text_encoder,
    distinct_captions,
    text_outputs_cacheable,
)
from tests.core.dataset_helpers import profile_for, snapshot
from tests.helpers.tiny_models import with_text

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle():
    from lora_core.families.sd.loading import load_model

    return load_model("builtin:tiny-sd1", Path("."), torch.float32)


def noise_image(path: Path, size=(64, 64), seed: int = 0) -> Path:
    """An image whose left and right halves differ (a flip must be visible)."""
    torch.manual_seed(seed)
    values = (torch.rand(size[1], size[0], 3) * 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, "RGB").save(path)
    return path


def make_dataset(root: Path, count: int = 2, captions: list[str] | None = None) -> Path:
    train = root / "train"
    for i in range(count):
        noise_image(train / "2_thing" / f"img{i}.png", seed=i)
        text = captions[i] if captions else f"thing, tag{i}"
        (train / "2_thing" / f"img{i}.txt").write_text(text, encoding="utf-8")
    return train


def plan_of(train: Path, **overrides):
    settings = {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128,
                "train_batch_size": 2, **overrides}
    profile = profile_for(train, **settings)
    return make_plan(profile, scan_profile(profile))


class EncodeCounter:
    """Wraps vae.encode and counts the images it is asked to encode."""

    def __init__(self, vae, monkeypatch):
        self.calls = 0
        self.images = 0
        original = vae.encode

        def encode(pixels, *args, **kwargs):
            self.calls += 1
            self.images += pixels.shape[0]
            return original(pixels, *args, **kwargs)

        monkeypatch.setattr(vae, "encode", encode)


def build(plan, bundle, root, **kwargs):
    kwargs = {"to_disk": True, "vae_batch_size": 2, "root": root, **kwargs}
    return build_cached_latents(plan, bundle, CPU, torch.float32, **kwargs)


def live_latent(bundle, item, key, flipped: bool) -> torch.Tensor:
    """What sd-scripts caches: latent_dist.sample() of the (mirrored) image, here with the
    generator seeded as the cache seeds it."""
    image = load_training_image(item.record.path, item.bucket_reso, item.resized_size)
    if flipped:
        image = flip_horizontal(image)
    generator = torch.Generator().manual_seed(key.sampling_seed(flipped))
    with torch.no_grad():
        posterior = bundle.vae.encode(pixels_to_tensor(image)[None]).latent_dist
        return posterior.sample(generator=generator)[0]


# ---------------------------------------------------------------------------------------
# Latents


@pytest.mark.parametrize("to_disk", [False, True])
def test_cached_latents_equal_live_seeded_sampling_and_flip_picks_the_mirror(
        tmp_path, bundle, to_disk):
    plan = plan_of(make_dataset(tmp_path), flip_aug=True)
    source = build(plan, bundle, tmp_path / "cache", to_disk=to_disk)
    scale = bundle.vae_scaling_factor
    for index, item in enumerate(plan.items):
        key = source.entries[index].key
        plain = live_latent(bundle, item, key, flipped=False)
        mirrored = live_latent(bundle, item, key, flipped=True)
        got = source.latents({"item_indices": [index], "flipped": [False]})[0]
        got_flipped = source.latents({"item_indices": [index], "flipped": [True]})[0]
        torch.testing.assert_close(got, plain * scale, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_flipped, mirrored * scale, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, got_flipped)
    # A mixed batch takes each sample's own choice.
    mixed = source.latents({"item_indices": [0, 1], "flipped": [True, False]})
    torch.testing.assert_close(mixed[0], source.latents({"item_indices": [0],
                                                         "flipped": [True]})[0])
    torch.testing.assert_close(mixed[1], source.latents({"item_indices": [1],
                                                         "flipped": [False]})[0])


def test_sampling_is_not_the_mean_and_memory_and_disk_agree(tmp_path, bundle):
    plan = plan_of(make_dataset(tmp_path, count=1))
    in_memory = build(plan, bundle, None, to_disk=False)
    on_disk = build(plan, bundle, tmp_path / "cache")
    batch = {"item_indices": [0], "flipped": [False]}
    torch.testing.assert_close(in_memory.latents(batch), on_disk.latents(batch))
    item = plan.items[0]
    pixels = pixels_to_tensor(load_training_image(item.record.path, item.bucket_reso,
                                                  item.resized_size))[None]
    with torch.no_grad():
        mean = bundle.vae.encode(pixels).latent_dist.mean[0] * bundle.vae_scaling_factor
    assert not torch.allclose(in_memory.latents(batch)[0], mean, atol=1e-4)


def test_encodes_by_bucket_in_vae_batches_and_reports_progress(tmp_path, bundle, monkeypatch):
    train = make_dataset(tmp_path, count=3)
    noise_image(train / "2_thing" / "wide.png", size=(128, 64), seed=9)  # another bucket
    plan = plan_of(train, resolution=128, bucket_no_upscale=True)  # buckets = image sizes
    assert sorted(plan.bucket_items) == [(64, 64), (128, 64)]
    counter = EncodeCounter(bundle.vae, monkeypatch)
    seen = []
    build(plan, bundle, tmp_path / "cache", vae_batch_size=2,
          progress=lambda done, total: seen.append((done, total)))
    # 3 square images → batches of 2 + 1; 1 wide image → 1 batch; never a mixed batch.
    assert counter.calls == 3 and counter.images == 4
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_second_build_reuses_the_disk_cache_without_calling_the_vae(tmp_path, bundle,
                                                                     monkeypatch):
    plan = plan_of(make_dataset(tmp_path), flip_aug=True)
    first = build(plan, bundle, tmp_path / "cache")
    counter = EncodeCounter(bundle.vae, monkeypatch)
    second = build(plan, bundle, tmp_path / "cache")
    assert counter.calls == 0
    batch = {"item_indices": [0, 1], "flipped": [False, True]}
    torch.testing.assert_close(first.latents(batch), second.latents(batch))
    # One file per image.
    assert len({e.path for e in second.entries}) == 2


def test_a_changed_image_is_encoded_again(tmp_path, bundle, monkeypatch):
    train = make_dataset(tmp_path)
    plan = plan_of(train)
    before = build(plan, bundle, tmp_path / "cache")
    old = before.latents({"item_indices": [1], "flipped": [False]})
    changed = plan.items[1].record.path
    noise_image(changed, seed=42)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    counter = EncodeCounter(bundle.vae, monkeypatch)
    after = build(plan, bundle, tmp_path / "cache")
    assert counter.images == 1  # only the edited image
    assert after.entries[1].path == before.entries[1].path  # overwritten, not duplicated
    assert not torch.allclose(after.latents({"item_indices": [1], "flipped": [False]}), old)


def test_a_changed_encoder_rebuilds_but_a_changed_decoder_does_not(tmp_path, bundle,
                                                                   monkeypatch):
    plan = plan_of(make_dataset(tmp_path, count=2))
    build(plan, bundle, tmp_path / "cache")

    decoder_tuned = copy.copy(bundle)
    decoder_tuned.vae = copy.deepcopy(bundle.vae)
    with torch.no_grad():
        decoder_tuned.vae.decoder.conv_out.weight.add_(0.1)
    counter = EncodeCounter(decoder_tuned.vae, monkeypatch)
    build(plan, decoder_tuned, tmp_path / "cache")
    assert counter.calls == 0

    encoder_tuned = copy.copy(bundle)
    encoder_tuned.vae = copy.deepcopy(bundle.vae)
    with torch.no_grad():
        encoder_tuned.vae.encoder.conv_in.weight.add_(0.1)
    assert (latent_cache.vae_fingerprint(encoder_tuned.vae)
            != latent_cache.vae_fingerprint(bundle.vae))
    counter = EncodeCounter(encoder_tuned.vae, monkeypatch)
    build(plan, encoder_tuned, tmp_path / "cache")
    assert counter.images == 2
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one folder per VAE


def test_a_changed_bucket_is_encoded_again(tmp_path, bundle, monkeypatch):
    train = make_dataset(tmp_path, count=2)
    small = build(plan_of(train), bundle, tmp_path / "cache")
    counter = EncodeCounter(bundle.vae, monkeypatch)
    large_plan = plan_of(train, resolution=128)
    assert large_plan.items[0].bucket_reso == (128, 128)
    large = build(large_plan, bundle, tmp_path / "cache")
    assert counter.images == 2
    assert large.entries[0].path != small.entries[0].path
    assert large.latents({"item_indices": [0], "flipped": [False]}).shape[-1] == 16


def test_turning_flip_aug_on_adds_the_mirrored_latents(tmp_path, bundle, monkeypatch):
    train = make_dataset(tmp_path, count=2)
    build(plan_of(train), bundle, tmp_path / "cache")
    counter = EncodeCounter(bundle.vae, monkeypatch)
    flipping = build(plan_of(train, flip_aug=True), bundle, tmp_path / "cache")
    assert counter.images == 4  # both images, plain and mirrored
    flipping.latents({"item_indices": [0, 1], "flipped": [True, True]})


def test_a_truncated_cache_file_is_rebuilt_not_fatal(tmp_path, bundle, monkeypatch):
    plan = plan_of(make_dataset(tmp_path, count=2))
    first = build(plan, bundle, tmp_path / "cache")
    expected = first.latents({"item_indices": [0], "flipped": [False]})
    damaged = first.entries[0].path
    damaged.write_bytes(damaged.read_bytes()[:60])
    counter = EncodeCounter(bundle.vae, monkeypatch)
    again = build(plan, bundle, tmp_path / "cache")
    assert counter.images == 1
    torch.testing.assert_close(again.latents({"item_indices": [0], "flipped": [False]}),
                               expected)
    # Garbage under the right name is rebuilt too.
    damaged.write_bytes(b"\x00" * 200)
    build(plan, bundle, tmp_path / "cache")
    assert counter.images == 2


def test_default_cache_folder_is_ours_and_the_dataset_is_untouched(tmp_path, bundle,
                                                                   monkeypatch):
    monkeypatch.setenv("LORA_TUI_CACHE_DIR", str(tmp_path / "ours"))
    train = make_dataset(tmp_path)
    plan = plan_of(train, flip_aug=True)
    before = snapshot(train)
    source = build(plan, bundle, None)
    assert snapshot(train) == before
    for entry in source.entries:
        assert entry.path.is_relative_to(tmp_path / "ours" / "latents")
        assert entry.path.is_file()


def test_nan_latents_name_the_image(tmp_path, bundle, monkeypatch):
    plan = plan_of(make_dataset(tmp_path, count=1))

    def nan_encode(pixels):
        shape = (pixels.shape[0], 4, pixels.shape[2] // 8, pixels.shape[3] // 8)
        return SimpleNamespace(latent_dist=SimpleNamespace(
            mean=torch.full(shape, float("nan")), std=torch.ones(shape)))

    monkeypatch.setattr(bundle.vae, "encode", nan_encode)
    with pytest.raises(DatasetError) as info:
        build(plan, bundle, tmp_path / "cache")
    assert "img0.png" in info.value.message and info.value.hint
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


def test_pixel_augmentations_refuse_the_cache(tmp_path, bundle):
    """The check refuses it (checks.rules, dataset_config); the run only asserts it."""
    plan = plan_of(make_dataset(tmp_path, count=1), random_crop=True)
    with pytest.raises(AssertionError, match="2_thing.*the profile check refuses"):
        build(plan, bundle, tmp_path / "cache")


def test_disk_shards_encode_only_their_share(tmp_path, bundle, monkeypatch):
    plan = plan_of(make_dataset(tmp_path, count=3))
    counter = EncodeCounter(bundle.vae, monkeypatch)
    build(plan, bundle, tmp_path / "cache", shard=(0, 2))
    build(plan, bundle, tmp_path / "cache", shard=(1, 2))
    assert counter.images == 3  # 2 + 1, no image twice
    combined = build(plan, bundle, tmp_path / "cache")
    assert counter.images == 3
    assert isinstance(combined, CachedLatents)


# ---------------------------------------------------------------------------------------
# Text-encoder outputs


def test_text_outputs_cacheable_needs_a_frozen_encoder_and_fixed_captions(tmp_path):
    train = make_dataset(tmp_path, count=1)
    assert text_outputs_cacheable(plan_of(train), network_trains_text_encoder=False)
    assert not text_outputs_cacheable(plan_of(train), network_trains_text_encoder=True)
    for varying in ({"shuffle_caption": True}, {"caption_dropout_rate": 0.1},
                    {"caption_tag_dropout_rate": 0.1}, {"token_warmup_step": 10}):
        assert not text_outputs_cacheable(plan_of(train, **varying), False), varying


@pytest.mark.parametrize("max_token_length", [75, 150])
def test_cached_text_encoder_equals_live_encoding(tmp_path, bundle, max_token_length):
    captions = ["a red thing", "a blue thing", "a red thing"]  # one duplicate
    plan = plan_of(make_dataset(tmp_path, count=3, captions=captions), caption_prefix="photo of")
    assert distinct_captions(plan) == ["photo of a red thing", "photo of a blue thing"]
    progress = []
    reading = with_text(bundle, clip_skip=2, max_token_length=max_token_length)
    cached = build_cached_text_encoder(plan, reading, CPU, batch_size=1,
                                       progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (2, 2)
    live = LiveTextEncoder(reading, CPU)
    batch = {"captions": ["photo of a blue thing", "photo of a red thing",
                          "photo of a blue thing"]}
    got = cached.hidden_states(batch, train_text_encoder=False)
    with torch.no_grad():
        expected = live.hidden_states(batch, train_text_encoder=False)
    assert got.shape == expected.shape == (3, max_token_length + 2, expected.shape[-1])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])
    with pytest.raises(ValueError):
        cached.hidden_states(batch, train_text_encoder=True)
