"""The training plan against kohya-compat.md §1.4 (reg balance), §4.4 (batching), §5.5
(steps), §7.1 (file names) and §7.2 (metadata shapes); and the check report."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lora_core.checks import scan_profile
from lora_core.checks.dataset import scan_notes, scan_problems
from lora_core.checks.report import render_check_report
from lora_core.dataset.plan import (
    balance_reg_repeats,
    epoch_batches,
    make_plan,
    plan_summary,
)
from lora_core.errors import DatasetError
from lora_core.saving.metadata import dataset_metadata
from tests.core.dataset_helpers import make_folder, profile_for


def plan_for(tmp_path, num_processes=1, **overrides):
    profile = profile_for(tmp_path / "train", tmp_path / "reg" if (tmp_path / "reg").exists()
                          else None, **overrides)
    scan = scan_profile(profile)
    return profile, scan, make_plan(profile, scan, num_processes)


@pytest.fixture
def two_buckets(tmp_path):
    """3 square images (bucket 512x512) and 5 4:3 images (bucket 576x448), repeats 1."""
    make_folder(tmp_path / "train", "1_sq", 3, size=(512, 512))
    make_folder(tmp_path / "train", "1_wide", 5, size=(640, 480))
    return tmp_path


# ---------------------------------------------------------------------------------------
# Regularization balance (§1.4)


@pytest.mark.parametrize(("num_train", "reg_repeats", "expected"), [
    (20, [1] * 6, [4, 4, 3, 3, 3, 3]),  # fewer reg samples: extra passes add 1 each, in order
    (3, [1] * 5, [1, 1, 1, 0, 0]),  # surplus: the last two are never used
    (5, [2] * 4, [2, 2, 2, 0]),  # own repeats in the first pass; stop once n >= train
    (7, [1, 1, 2, 2], [2, 1, 2, 2]),
    (10, [], []),
])
def test_balance_reg_repeats(num_train, reg_repeats, expected):
    assert balance_reg_repeats(num_train, reg_repeats) == expected


def test_plan_with_fewer_reg_images_raises_their_repeats(tmp_path):
    make_folder(tmp_path / "train", "2_char", 5)
    make_folder(tmp_path / "reg", "1_person", 4, captions=None)
    _, _, plan = plan_for(tmp_path, prior_loss_weight=0.5)
    assert plan.num_train_images == 10
    assert plan.num_reg_images == 4  # sd-scripts' meaning: before balancing
    assert plan.num_reg_samples == 10
    reg = next(s for s in plan.subsets if s.is_reg)
    assert reg.effective_repeats == [3, 3, 2, 2]
    reg_items = [it for it in plan.items if it.is_reg]
    assert [it.repeats for it in reg_items] == [3, 3, 2, 2]
    assert {it.loss_weight for it in reg_items} == {0.5}
    assert {it.loss_weight for it in plan.items if not it.is_reg} == {1.0}
    # The "steps double" effect: 10 train + 10 reg samples, batch 1.
    assert plan.batches_per_epoch == 20
    assert plan.unused_reg_images == 0


def test_plan_with_surplus_reg_images_leaves_them_unused(tmp_path):
    make_folder(tmp_path / "train", "1_char", 3)
    make_folder(tmp_path / "reg", "1_person", 5, captions=None)
    _, scan, plan = plan_for(tmp_path)
    assert plan.num_reg_images == 5 and plan.num_reg_samples == 3
    assert plan.unused_reg_images == 2
    assert [it.record.path.name for it in plan.items if it.is_reg] == [
        "img00.png", "img01.png", "img02.png"]  # the same first ones, always
    assert any("2 of 5 regularization images are never used" in n.message
               for n in scan_notes(scan))
    assert json.loads(dataset_metadata(plan)["ss_reg_dataset_dirs"]) == {
        "1_person": {"n_repeats": 1, "img_count": 5}}


# ---------------------------------------------------------------------------------------
# Buckets, batches and steps (§4.4, §5.5)


def test_batches_per_epoch_sum_over_buckets(two_buckets):
    _, _, plan = plan_for(two_buckets, train_batch_size=2, max_train_epochs=3)
    assert plan.bucket_counts == {(512, 512): 3, (576, 448): 5}
    # ceil(3/2) + ceil(5/2) = 5, one more than ceil(8/2): batches never mix buckets.
    assert plan.batches_per_epoch == 5
    assert plan.steps_per_epoch == 5
    assert (plan.num_epochs, plan.max_train_steps) == (3, 15)
    assert plan.mean_ar_error == pytest.approx(5 * abs(576 / 448 - 640 / 480) / 8)


def test_gradient_accumulation_and_processes_divide_steps(two_buckets):
    _, _, plan = plan_for(two_buckets, train_batch_size=2, max_train_epochs=3,
                          gradient_accumulation_steps=2)
    assert (plan.steps_per_epoch, plan.max_train_steps) == (3, 9)  # ceil(5 / 2) = 3
    _, _, plan = plan_for(two_buckets, num_processes=2, train_batch_size=2,
                          max_train_epochs=3, gradient_accumulation_steps=2)
    assert (plan.steps_per_epoch, plan.max_train_steps) == (2, 6)  # ceil(5 / 2 / 2) = 2
    assert dataset_metadata(plan)["ss_num_batches_per_epoch"] == "3"  # per process


def test_max_train_steps_gives_the_epoch_count(two_buckets):
    _, _, plan = plan_for(two_buckets, train_batch_size=2, max_train_steps=7,
                          gradient_accumulation_steps=2)
    assert (plan.steps_per_epoch, plan.num_epochs, plan.max_train_steps) == (3, 3, 7)


def test_epochs_win_over_steps_with_a_warning(two_buckets):
    _, _, plan = plan_for(two_buckets, max_train_epochs=2, max_train_steps=1000)
    assert (plan.num_epochs, plan.max_train_steps) == (2, 16)
    assert any("max_train_epochs wins" in w for w in plan.warnings)


def test_neither_epochs_nor_steps_means_one_epoch(two_buckets):
    _, _, plan = plan_for(two_buckets)
    assert (plan.num_epochs, plan.max_train_steps) == (1, 8)


@pytest.mark.parametrize(("warmup", "expected"), [(0, 0), (5, 5), (0.1, 1), (0.5, 7)])
def test_warmup_steps_or_ratio(two_buckets, warmup, expected):
    _, _, plan = plan_for(two_buckets, train_batch_size=2, max_train_epochs=3,
                          lr_warmup_steps=warmup)
    assert plan.warmup_steps == expected  # ratio of 15 steps, rounded down


def test_save_points_and_file_names(two_buckets):
    _, _, plan = plan_for(two_buckets, max_train_epochs=10, save_every_n_epochs=2,
                          save_every_n_steps=16)
    assert plan.steps_per_epoch == 8 and plan.max_train_steps == 80
    assert plan.epoch_save_points == [2, 4, 6, 8]  # not 10: the last epoch is the final file
    # sd-scripts writes a step file at every multiple of N, the last step included
    assert plan.step_save_points == [16, 32, 48, 64, 80]
    assert plan.epoch_file_name(2) == "mylora-000002.safetensors"
    assert plan.step_file_name(16) == "mylora-step00000016.safetensors"
    assert plan.final_file_name == "mylora.safetensors"
    schedule = plan.checkpoint_schedule()
    assert schedule[:3] == [(16, "mylora-step00000016.safetensors"),
                            (16, "mylora-000002.safetensors"),
                            (32, "mylora-step00000032.safetensors")]
    assert len(schedule) == 9


def test_no_upscale_rejects_images_below_the_step(tmp_path):
    make_folder(tmp_path / "train", "1_a", 1, size=(40, 300))
    profile = profile_for(tmp_path / "train", bucket_no_upscale=True)
    with pytest.raises(DatasetError, match="smaller than bucket_reso_steps"):
        make_plan(profile, scan_profile(profile))


def test_no_training_images_cannot_be_planned(tmp_path):
    (tmp_path / "train" / "1_empty").mkdir(parents=True)
    profile = profile_for(tmp_path / "train")
    with pytest.raises(DatasetError, match="no usable training images"):
        make_plan(profile, scan_profile(profile))


# ---------------------------------------------------------------------------------------
# Epoch batches


def test_epoch_batches_are_deterministic_per_seed_and_epoch(tmp_path):
    make_folder(tmp_path / "train", "3_sq", 7, size=(512, 512))
    make_folder(tmp_path / "train", "2_wide", 5, size=(640, 480))
    _, _, plan = plan_for(tmp_path, train_batch_size=2)
    first = epoch_batches(plan, seed=42, epoch=1)
    assert first == epoch_batches(plan, seed=42, epoch=1)
    assert first != epoch_batches(plan, seed=43, epoch=1)
    assert first != epoch_batches(plan, seed=42, epoch=2)
    assert len(first) == plan.batches_per_epoch == 11 + 5  # ceil(21/2) + ceil(10/2)
    assert all(1 <= len(batch) <= 2 for batch in first)
    # The batch order itself is shuffled, so the two buckets interleave.
    buckets = [plan.items[batch[0]].bucket_reso for batch in first]
    assert buckets != sorted(buckets) and buckets != sorted(buckets, reverse=True)
    # Every item appears exactly `repeats` times per epoch.
    counts = Counter(index for batch in first for index in batch)
    assert counts == {i: item.repeats for i, item in enumerate(plan.items)}


def test_batches_never_mix_buckets(tmp_path):
    make_folder(tmp_path / "train", "3_sq", 5, size=(512, 512))
    make_folder(tmp_path / "train", "3_wide", 5, size=(640, 480))
    make_folder(tmp_path / "train", "3_tall", 5, size=(300, 900))
    _, _, plan = plan_for(tmp_path, train_batch_size=4)
    assert len(plan.bucket_counts) == 3
    for seed in range(5):
        for batch in epoch_batches(plan, seed=seed, epoch=1):
            assert len({plan.items[i].bucket_reso for i in batch}) == 1


# ---------------------------------------------------------------------------------------
# Summary, metadata and report


def test_metadata_fields_have_sd_scripts_shapes(two_buckets):
    folder = two_buckets / "train" / "1_sq"
    (folder / "img00.txt").write_text("Sks Dog, red", encoding="utf-8")
    (two_buckets / "train" / "1_empty").mkdir()
    _, _, plan = plan_for(two_buckets, train_batch_size=2)
    fields = dataset_metadata(plan)
    assert fields["ss_dataset_dirs"] == ('{"1_sq": {"n_repeats": 1, "img_count": 3}, '
                                         '"1_wide": {"n_repeats": 1, "img_count": 5}}')
    assert fields["ss_reg_dataset_dirs"] == "{}"
    tags = json.loads(fields["ss_tag_frequency"])
    assert tags["1_sq"] == {"sks dog": 1, "red": 1, "tag1": 1, "tag2": 1, "common": 2}
    assert tags["1_empty"] == {}  # sd-scripts records empty folders too
    info = json.loads(fields["ss_bucket_info"])
    assert info["buckets"] == {"0": {"resolution": [512, 512], "count": 3},
                               "1": {"resolution": [576, 448], "count": 5}}
    assert info["mean_img_ar_error"] == pytest.approx(plan.mean_ar_error)
    assert (fields["ss_num_train_images"], fields["ss_num_reg_images"],
            fields["ss_num_batches_per_epoch"]) == ("8", "0", "5")
    assert all(isinstance(v, str) for v in fields.values())


def test_bucket_info_is_null_without_bucketing(two_buckets):
    _, _, plan = plan_for(two_buckets, enable_bucket=False)
    assert plan.bucket_counts == {(512, 512): 8}
    assert dataset_metadata(plan)["ss_bucket_info"] == "null"


def test_plan_summary_is_json_ready(two_buckets):
    make_folder(two_buckets / "reg", "1_person", 2, captions=None)
    _, _, plan = plan_for(two_buckets, save_every_n_epochs=1, max_train_epochs=3)
    summary = json.loads(json.dumps(plan_summary(plan)))
    rows = {row["name"]: row for row in summary["folders"]}
    assert rows["1_person"]["is_reg"] and rows["1_person"]["captions_missing"] == 2
    assert rows["1_person"]["effective_repeats"] == [4, 4]
    assert rows["1_wide"]["images"] == 5 and rows["1_wide"]["captions_found"] == 5
    assert summary["checkpoints"]["files"] == ["mylora-000001.safetensors",
                                               "mylora-000002.safetensors"]
    assert summary["max_train_steps"] == plan.max_train_steps == 48


def test_check_report_fits_80_columns_and_shows_the_numbers(two_buckets):
    make_folder(two_buckets / "reg", "1_person", 20, captions=None)
    (two_buckets / "train" / "1_wide" / "broken.png").write_bytes(b"junk")
    profile, scan, plan = plan_for(two_buckets, train_batch_size=2, max_train_epochs=4,
                                   save_every_n_epochs=1, save_every_n_steps=3)
    text = render_check_report(scan, plan, profile, scan_problems(scan) + scan_notes(scan))
    # Only lines that name a (long, temporary) folder may be wider than 80 columns.
    assert max(len(line) for line in text.splitlines() if str(two_buckets) not in line) <= 80
    for expected in ["1_sq", "reg/1_person", "512x512", "576x448", "mylora.safetensors",
                     "12 image(s) unused", "broken.png", "Problems (1)"]:
        assert expected in text
    steps_line = next(line for line in text.splitlines() if "total steps" in line)
    assert steps_line.split()[-1] == str(plan.max_train_steps)
    assert "..." in text  # the 9 step files are abbreviated
    without_plan = render_check_report(scan, None, profile, scan_problems(scan))
    assert "reg/1_person" in without_plan and "Steps" not in without_plan
