"""Per-sample augmentations (kohya-compat.md §4.3, §4.5) and the loader that applies them.

Images are generated so that every pixel says where it came from (red = column, green =
row), which turns "was it flipped / where was it cropped" into arithmetic on pixel values.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_core.checks import scan_profile
from lora_core.dataset import loader
from lora_core.dataset.images import (
    GAMMA_RANGE,
    HUE_SHIFT_LIMIT,
    augment_rng,
    color_augment,
    crop_offset,
    load_sample_image,
    load_training_image,
    shift_hue,
)
from lora_core.dataset.loader import EpochBatches, optimizer_step_at, pixels_to_tensor
from lora_core.dataset.plan import epoch_batches, make_plan
from lora_core.dataset.subset_options import SubsetOptions
from tests.core.dataset_helpers import profile_for


def coordinate_image(path: Path, width: int, height: int) -> Path:
    """Red = 2·column (mod 256), green = 3·row (mod 256), blue = 77."""
    xs = (np.arange(width) * 2 % 256).astype(np.uint8)
    ys = (np.arange(height) * 3 % 256).astype(np.uint8)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = xs[None, :]
    pixels[..., 1] = ys[:, None]
    pixels[..., 2] = 77
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)
    return path


class ScriptedRng:
    """A stand-in for random.Random that returns queued values and records each call."""

    def __init__(self, randoms=(), uniforms=()):
        self.randoms, self.uniforms = list(randoms), list(uniforms)
        self.calls = []

    def random(self):
        self.calls.append(("random",))
        return self.randoms.pop(0)

    def uniform(self, low, high):
        self.calls.append(("uniform", low, high))
        return self.uniforms.pop(0)

    def randint(self, low, high):
        self.calls.append(("randint", low, high))
        return high


# ---------------------------------------------------------------------------------------
# flip_aug


def test_flip_mirrors_about_half_the_samples_exactly_and_deterministically(tmp_path):
    path = coordinate_image(tmp_path / "a.png", 64, 64)
    plain = np.asarray(load_training_image(path, (64, 64), (64, 64)))
    opts = SubsetOptions(flip_aug=True)
    flips = 0
    for position in range(60):
        image, flipped = load_sample_image(path, (64, 64), (64, 64), opts,
                                           augment_rng(5, 0, position, 0))
        expected = plain[:, ::-1] if flipped else plain
        np.testing.assert_array_equal(np.asarray(image), expected)
        again, flipped_again = load_sample_image(path, (64, 64), (64, 64), opts,
                                                 augment_rng(5, 0, position, 0))
        assert flipped_again == flipped
        np.testing.assert_array_equal(np.asarray(again), np.asarray(image))
        flips += flipped
    assert 15 <= flips <= 45  # p = 0.5


def test_without_flip_aug_nothing_is_flipped_and_nothing_is_drawn(tmp_path):
    path = coordinate_image(tmp_path / "a.png", 64, 64)
    plain = np.asarray(load_training_image(path, (64, 64), (64, 64)))
    rng = ScriptedRng()
    image, flipped = load_sample_image(path, (64, 64), (64, 64), SubsetOptions(), rng)
    assert not flipped and rng.calls == []
    np.testing.assert_array_equal(np.asarray(image), plain)


# ---------------------------------------------------------------------------------------
# random_crop


def test_random_crop_offsets_cover_the_whole_range_and_never_leave_it():
    lefts, tops = set(), set()
    for seed in range(400):
        left, top = crop_offset((80, 90), (64, 64), random.Random(seed))
        lefts.add(left)
        tops.add(top)
    assert lefts == set(range(0, 17)) and tops == set(range(0, 27))
    assert crop_offset((80, 90), (64, 64), None) == (8, 13)  # centre without random_crop


def test_random_crop_draws_width_then_height_and_only_where_there_is_excess():
    rng = ScriptedRng()
    assert crop_offset((80, 90), (64, 64), rng) == (16, 26)
    assert rng.calls == [("randint", 0, 16), ("randint", 0, 26)]
    rng = ScriptedRng()
    assert crop_offset((100, 64), (64, 64), rng) == (36, 0)
    assert rng.calls == [("randint", 0, 36)]


def test_random_crop_cuts_the_pixels_at_the_drawn_offset(tmp_path):
    path = coordinate_image(tmp_path / "wide.png", 100, 64)
    opts = SubsetOptions(random_crop=True)
    for seed in range(5):
        image, _ = load_sample_image(path, (64, 64), (100, 64), opts, random.Random(seed))
        left, top = crop_offset((100, 64), (64, 64), random.Random(seed))
        pixels = np.asarray(image)
        assert pixels.shape == (64, 64, 3)
        assert pixels[0, 0, 0] == 2 * left and pixels[0, 63, 0] == 2 * (left + 63)
        assert top == 0 and pixels[10, 0, 1] == 30
    centred, _ = load_sample_image(path, (64, 64), (100, 64), SubsetOptions(),
                                   random.Random(0))
    assert np.asarray(centred)[0, 0, 0] == 2 * 18


# ---------------------------------------------------------------------------------------
# color_aug


def _reference_shift(rgb, shift):
    """The spec with colorsys doing the colour wheel: hue in whole OpenCV units (2 degrees),
    a negative shift taken as 180 + shift, the sum mod 180 truncated, S and V kept."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    units = round(h * 180) % 180
    shifted = int((units + (shift + 180 if shift < 0 else shift)) % 180)
    return [round(c * 255) for c in colorsys.hsv_to_rgb(shifted / 180, s, v)]


@pytest.mark.parametrize("shift", [4.0, -6.5, 7.9])
def test_hue_shift_rotates_the_colour_wheel_by_twice_the_opencv_units(shift):
    colours = [(255, 0, 0), (200, 120, 30), (20, 60, 220), (90, 200, 90), (128, 128, 128)]
    pixels = np.array([colours], dtype=np.uint8)
    shifted = shift_hue(pixels, shift)[0]
    for colour, got in zip(colours, shifted, strict=True):
        expected = _reference_shift(colour, shift)
        # S and V are stored as whole levels in 8-bit HSV: allow that rounding.
        assert np.abs(got.astype(int) - np.array(expected)).max() <= 2, (colour, got)
    assert tuple(shifted[-1]) == (128, 128, 128)  # grey has no hue
    assert tuple(shifted[0]) != (255, 0, 0)


def test_color_aug_skips_two_thirds_of_the_time_untouched():
    image = Image.fromarray(np.array([[(200, 120, 30), (20, 60, 220)]], dtype=np.uint8), "RGB")
    rng = ScriptedRng(randoms=[0.34])
    assert color_augment(image, rng) is image
    assert rng.calls == [("random",)]
    changed = sum(not np.array_equal(np.asarray(color_augment(image, random.Random(s))),
                                     np.asarray(image))
                  for s in range(300))
    assert 0.24 * 300 <= changed <= 0.42 * 300  # p = 0.33


def test_color_aug_hue_branch_draws_the_documented_range():
    image = Image.fromarray(np.array([[(200, 120, 30), (255, 0, 0)]], dtype=np.uint8), "RGB")
    rng = ScriptedRng(randoms=[0.33, 0.51], uniforms=[5.0])  # 0.33 itself still applies
    out = np.asarray(color_augment(image, rng))
    assert rng.calls == [("random",), ("random",),
                         ("uniform", -HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT)]
    np.testing.assert_array_equal(out, shift_hue(np.asarray(image), 5.0))
    assert HUE_SHIFT_LIMIT == 8.0


def test_color_aug_gamma_branch_raises_raw_values_like_sd_scripts():
    values = np.array([[(0, 1, 50), (128, 200, 255)]], dtype=np.uint8)
    image = Image.fromarray(values, "RGB")
    for gamma in (0.95, 1.04):
        rng = ScriptedRng(randoms=[0.1, 0.5], uniforms=[gamma])
        out = np.asarray(color_augment(image, rng))
        assert rng.calls[-1] == ("uniform", *GAMMA_RANGE)
        expected = [[[min(255, int(float(v) ** gamma)) for v in px] for px in row]
                    for row in values.tolist()]
        np.testing.assert_array_equal(out, np.array(expected, dtype=np.uint8))
    assert GAMMA_RANGE == (0.95, 1.05)


def test_every_augmentation_together_is_a_function_of_the_sample(tmp_path):
    path = coordinate_image(tmp_path / "wide.png", 100, 70)
    opts = SubsetOptions(flip_aug=True, random_crop=True, color_aug=True)
    runs = [[np.asarray(load_sample_image(path, (64, 64), (100, 70), opts,
                                          augment_rng(3, 1, p, 1))[0]) for p in range(12)]
            for _ in range(2)]
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)
    assert len({a.tobytes() for a in runs[0]}) > 6


# ---------------------------------------------------------------------------------------
# The loader


def _plan(tmp_path, count=4, **overrides):
    train = tmp_path / "train"
    for i in range(count):
        coordinate_image(train / "1_thing" / f"img{i}.png", 64, 64)
        (train / "1_thing" / f"img{i}.txt").write_text(f"thing, a{i}, b{i}, c{i}",
                                                       encoding="utf-8")
    settings = {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128,
                "train_batch_size": 2, **overrides}
    profile = profile_for(train, **settings)
    return make_plan(profile, scan_profile(profile))


def test_loader_flips_pixels_and_the_cached_mode_makes_the_same_choices(tmp_path):
    plan = _plan(tmp_path, count=6, flip_aug=True)
    batches = epoch_batches(plan, 11, 0)
    pixels = EpochBatches(plan, batches, 11, 0, 0)
    cached = EpochBatches(plan, batches, 11, 0, 0, latents_cached=True)
    seen = []
    for index in range(len(batches)):
        with_pixels, without = pixels[index], cached[index]
        assert "pixel_values" not in without
        assert with_pixels["flipped"] == without["flipped"]
        assert with_pixels["item_indices"] == without["item_indices"] == batches[index]
        assert with_pixels["captions"] == without["captions"]
        for slot, item_index in enumerate(batches[index]):
            item = plan.items[item_index]
            plain = pixels_to_tensor(load_training_image(item.record.path, item.bucket_reso,
                                                         item.resized_size))
            expected = plain.flip(-1) if with_pixels["flipped"][slot] else plain
            torch.testing.assert_close(with_pixels["pixel_values"][slot], expected)
            seen.append(with_pixels["flipped"][slot])
    assert True in seen and False in seen


def test_loader_reads_options_from_the_item_subset_not_the_profile(tmp_path):
    plan = _plan(tmp_path, count=4)  # flip_aug off in the profile
    subset = plan.subsets[0]
    subset.scan.options = SubsetOptions(flip_aug=True)
    batches = epoch_batches(plan, 2, 0)
    flips = [f for i in range(len(batches))
             for f in EpochBatches(plan, batches, 2, 0, 0, latents_cached=True)[i]["flipped"]]
    assert True in flips


def test_captions_do_not_depend_on_the_augmentations(tmp_path):
    shuffled = _plan(tmp_path / "a", shuffle_caption=True, keep_tokens=1)
    augmented = _plan(tmp_path / "b", shuffle_caption=True, keep_tokens=1, flip_aug=True,
                      color_aug=True, random_crop=True)
    batches = epoch_batches(shuffled, 4, 0)
    for index in range(len(batches)):
        a = EpochBatches(shuffled, batches, 4, 0, 0)[index]["captions"]
        b = EpochBatches(augmented, batches, 4, 0, 0)[index]["captions"]
        assert a == b


def test_loader_passes_the_epoch_and_the_optimizer_step_to_the_caption(tmp_path,
                                                                        monkeypatch):
    plan = _plan(tmp_path, count=8, train_batch_size=1, gradient_accumulation_steps=3)
    assert plan.steps_per_epoch == 3  # 8 batches, steps after batches 3, 6 and 8
    recorded = []

    def record(caption, opts, rng, *, epoch, step, max_train_steps):
        recorded.append((epoch, step, max_train_steps))
        return caption

    monkeypatch.setattr(loader, "process_caption", record)
    batches = epoch_batches(plan, 1, 1)
    # A resumed epoch (index 1 of the run) starting at its 5th batch.
    dataset = EpochBatches(plan, batches[4:], 1, 1, 4)
    for index in range(len(dataset)):
        dataset[index]
    # The trainer steps after batches 3, 6 and 8 of each epoch: before batch 5 of the
    # second epoch 3 + 1 steps are done, before batches 7 and 8, 3 + 2.
    assert recorded == [(2, 4, plan.max_train_steps), (2, 4, plan.max_train_steps),
                        (2, 5, plan.max_train_steps), (2, 5, plan.max_train_steps)]
    assert [optimizer_step_at(plan, 0, p) for p in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
