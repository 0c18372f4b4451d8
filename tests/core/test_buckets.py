"""Bucket maths against kohya-compat.md §4.1-4.3, and the image loader that applies it."""

from __future__ import annotations

import pytest
from PIL import Image

from lora_core.dataset.buckets import (
    BucketConfig,
    assign_bucket,
    assign_bucket_no_upscale,
    bucket_config,
    crop_box,
    crop_ltrb_for_sdxl,
    make_bucket_resolutions,
    round_to_steps,
)
from lora_core.dataset.images import load_training_image, resample_filter
from lora_core.errors import DatasetError
from lora_core.profile import DatasetSection

# kohya-compat.md §4.1: resolution=512, 256..1024, d=64.
REFERENCE_512 = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768),
                 (384, 640), (448, 576), (512, 512)]


def test_bucket_resolutions_512_match_the_reference_example():
    expected = sorted(set(REFERENCE_512) | {(h, w) for w, h in REFERENCE_512})
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == expected
    assert len(expected) == 17


def test_bucket_resolutions_1024_match_the_reference_example():
    buckets = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(buckets) == 41
    for reso in [(832, 1216), (896, 1152), (960, 1088), (1024, 1024)]:
        assert reso in buckets
    assert buckets == sorted(set(buckets))
    assert all(w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    # Heights are capped at max_size: width 256 would allow 4096.
    assert (256, 2048) in buckets and (2048, 256) in buckets
    assert all(256 <= side <= 2048 for reso in buckets for side in reso)


def test_assign_bucket_picks_the_closest_aspect_and_covers_it():
    buckets = make_bucket_resolutions((512, 512), 256, 1024, 64)
    # 4:3 -> 576x448 (ar 1.286); wider than the bucket, so heights match and width rounds
    # half up: 1000 * 448/750 = 597.33 -> 597.
    assert assign_bucket((1000, 750), buckets) == ((576, 448), (597, 448))
    # 1:3 -> 256x832; 300 * 832/900 = 277.33 -> 277.
    assert assign_bucket((300, 900), buckets) == ((256, 832), (277, 832))
    # Rounded half up: 1001 * 448/750 = 597.93 -> 598.
    assert assign_bucket((1001, 750), buckets) == ((576, 448), (598, 448))
    # Small images are enlarged to cover the bucket.
    assert assign_bucket((100, 100), buckets) == ((512, 512), (512, 512))


def test_assign_bucket_prefers_an_exact_size_match_over_list_order():
    # Both buckets are square; by aspect alone the first would win.
    assert assign_bucket((256, 256), [(512, 512), (256, 256)]) == ((256, 256), (256, 256))
    # Without an exact match, the first of equally good buckets wins.
    assert assign_bucket((300, 300), [(512, 512), (256, 256)]) == ((512, 512), (512, 512))


def test_round_to_steps_rounds_half_up_then_down_to_a_multiple():
    assert round_to_steps(591.2, 64) == 576
    assert round_to_steps(63.5, 64) == 64
    assert round_to_steps(127.4, 64) == 64


def test_no_upscale_keeps_small_images_and_floors_the_bucket():
    assert assign_bucket_no_upscale((300, 200), 512 * 512, 64) == ((256, 192), (300, 200))


def test_no_upscale_shrinks_large_images_to_the_area_keeping_the_aspect():
    # 4:3 at 512*512: the height-rounded candidate (512x384) has no aspect error.
    assert assign_bucket_no_upscale((1024, 768), 512 * 512, 64) == ((512, 384), (512, 384))
    assert assign_bucket_no_upscale((2000, 1000), 512 * 512, 64) == ((640, 320), (640, 320))
    # A side below the step gives a zero-size bucket; make_plan rejects that.
    assert assign_bucket_no_upscale((40, 300), 512 * 512, 64)[0] == (0, 256)


def test_crop_box_is_centred():
    assert crop_box((597, 448), (576, 448)) == (10, 0)
    assert crop_box((277, 832), (256, 832)) == (10, 0)
    assert crop_box((512, 515), (512, 512)) == (0, 1)
    with pytest.raises(ValueError):
        crop_box((500, 512), (512, 512))


def test_crop_ltrb_for_sdxl_fits_the_original_inside_the_bucket():
    # Bucket narrower than the image: widths match, top offset = (448 - 432) // 2.
    assert crop_ltrb_for_sdxl((576, 448), (1000, 750)) == (0.0, 8.0, 576.0, 440.0)
    assert crop_ltrb_for_sdxl((256, 832), (300, 900)) == (0.0, 32.0, 256.0, 800.0)
    # Bucket wider than the image: heights match, left offset = (576 - 448) // 2.
    assert crop_ltrb_for_sdxl((576, 448), (500, 500)) == (64.0, 0.0, 512.0, 448.0)


def test_crop_ltrb_for_sdxl_with_flip_mirrors_the_left_edge():
    left, top, right, _ = crop_ltrb_for_sdxl((576, 448), (501, 500))
    assert left == 63.0  # floor((576 - 448.896) / 2)
    flipped = crop_ltrb_for_sdxl((576, 448), (501, 500), flip=True)
    assert flipped[0] == pytest.approx(576 - right)
    assert flipped[1:3] == (top, pytest.approx(576 - left))


def test_bucket_config_rounds_min_and_max_to_steps_with_warnings():
    ds = DatasetSection(resolution=512, min_bucket_reso=300, max_bucket_reso=1000)
    config, warnings = bucket_config(ds)
    assert (config.mode, config.min_bucket_reso, config.max_bucket_reso) == ("aspect", 256, 1024)
    assert len(warnings) == 2 and "rounded down to 256" in warnings[0]
    assert config.smallest_side() == 256


def test_bucket_config_modes():
    single, _ = bucket_config(DatasetSection(resolution="768,512", enable_bucket=False))
    assert single.mode == "single" and single.predefined == [(768, 512)]
    assert single.assign((1000, 1000)) == ((768, 512), (768, 768))
    assert single.smallest_side() == 512
    no_up, warnings = bucket_config(DatasetSection(bucket_no_upscale=True))
    assert no_up.mode == "no_upscale" and no_up.predefined == []
    assert "ignored" in warnings[0]
    assert no_up.assign((300, 200)) == ((256, 192), (300, 200))
    assert BucketConfig("no_upscale", (512, 512), 256, 1024, 64).smallest_side() == 64


def test_resample_filter_box_when_shrinking_lanczos_when_enlarging():
    assert resample_filter((1000, 750), (597, 448)) is Image.Resampling.BOX
    assert resample_filter((100, 100), (512, 512)) is Image.Resampling.LANCZOS
    # Shrinking one side while growing the other counts as enlarging (as sd-scripts).
    assert resample_filter((600, 400), (512, 512)) is Image.Resampling.LANCZOS


def test_load_training_image_resizes_and_centre_crops(tmp_path):
    # Column x has red value x: after a centre crop the first column is the offset.
    image = Image.new("RGB", (597, 448))
    image.putdata([(x % 256, 0, 0) for _ in range(448) for x in range(597)])
    path = tmp_path / "a.png"
    image.save(path)
    loaded = load_training_image(path, (576, 448), (597, 448))
    assert loaded.size == (576, 448) and loaded.mode == "RGB"
    assert loaded.getpixel((0, 0))[0] == 10
    enlarged = load_training_image(path, (512, 512), (683, 512))
    assert enlarged.size == (512, 512)


def test_load_training_image_converts_rgba_to_rgb(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(path)
    loaded = load_training_image(path, (64, 64), (64, 64))
    assert loaded.mode == "RGB" and loaded.getpixel((5, 5)) == (10, 20, 30)


def test_load_training_image_names_a_truncated_file(tmp_path):
    noisy = Image.effect_noise((256, 256), 80).convert("RGB")
    full = tmp_path / "full.png"
    noisy.save(full)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[:2000])
    with pytest.raises(DatasetError) as info:
        load_training_image(truncated, (256, 256), (256, 256))
    assert "truncated.png" in info.value.message
    assert info.value.hint
