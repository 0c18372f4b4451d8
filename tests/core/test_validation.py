"""Validation split (kohya-compat.md §12.3) in the plan, the checks, the metadata and the
trackers: held-out images never enter a training batch, reg folders are never split, and
bad values are refused before anything heavy starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_core.checks import check_profile, scan_profile
from lora_core.checks.report import render_check_report
from lora_core.checks.rules import profile_rules
from lora_core.dataset.dataset_config import dataset_config_from_dict
from lora_core.dataset.plan import (
    epoch_batches,
    make_plan,
    plan_summary,
    split_held_out,
    validation_timesteps,
)
from lora_core.errors import ProfileError
from lora_core.events import ValidationMeasured
from lora_core.profile import DatasetSection
from lora_core.training.trackers import scalars_of
from tests.core.dataset_helpers import make_folder, profile_for


def plan_of(tmp_path: Path, **overrides):
    profile = profile_for(tmp_path / "train", tmp_path / "reg" if (tmp_path / "reg").exists()
                          else None, **overrides)
    return profile, make_plan(profile, scan_profile(profile))


@pytest.fixture
def dataset(tmp_path):
    make_folder(tmp_path / "train", "3_char", 10)
    make_folder(tmp_path / "train", "2_style", 5, stem="st")
    make_folder(tmp_path / "reg", "1_person", 30, captions=None)
    return tmp_path


def test_held_out_images_never_enter_a_training_batch(dataset):
    _, plan = plan_of(dataset, validation_split=0.3, seed=7, max_train_epochs=3,
                      train_batch_size=2)
    held = {r.path for r in plan.held_out}
    # floor(10 x 0.3) = 3 (not 2 from 2.9999...) and floor(5 x 0.3) = 1; reg never split
    assert len(held) == 4 == plan.num_validation_images
    assert all(s.held_out == [] for s in plan.subsets if s.is_reg)
    validation = {plan.items[i].record.path for b in plan.validation_batches for i in b}
    assert validation == held
    for epoch in range(3):
        trained = {plan.items[i].record.path for b in epoch_batches(plan, 7, epoch) for i in b}
        assert not trained & held
        assert len(trained) == 11 + 29  # every other train image, and the balanced reg ones
    # Counts follow sd-scripts: only trained images count, and reg balances against them.
    assert plan.num_train_images == 7 * 3 + 4 * 2
    assert plan.num_reg_samples == plan.num_train_images


def test_the_split_depends_on_the_seed_alone_and_validation_seed_wins(dataset):
    _, first = plan_of(dataset, validation_split=0.3, seed=7)
    _, again = plan_of(dataset, validation_split=0.3, seed=7, max_train_epochs=9)
    assert [r.path for r in first.held_out] == [r.path for r in again.held_out]
    _, other = plan_of(dataset, validation_split=0.3, seed=8)
    _, pinned = plan_of(dataset, validation_split=0.3, seed=8, validation_seed=7)
    assert [r.path for r in pinned.held_out] == [r.path for r in first.held_out]
    assert [r.path for r in other.held_out] != [r.path for r in first.held_out]
    # No seed at all: a fixed one, so check, run and resume hold out the same images.
    _, unseeded = plan_of(dataset, validation_split=0.3)
    assert unseeded.validation_seed == 0


def test_split_held_out_rounds_down_and_always_keeps_one_image():
    assert len(split_held_out(10, 0.3, 1)) == 3
    assert len(split_held_out(10, 0.7, 1)) == 7
    assert len(split_held_out(1, 0.5, 1)) == 0
    assert len(split_held_out(3, 0.99, 1)) == 2
    assert split_held_out(10, 0.0, 1) == set()
    assert split_held_out(20, 0.25, 5) == split_held_out(20, 0.25, 5)


def test_validation_timesteps_are_sd_scripts_fixed_four():
    assert validation_timesteps(0, 1000) == [200, 400, 600, 800]
    assert validation_timesteps(100, 600) == [200, 300, 400, 500]


def test_no_split_changes_nothing(dataset):
    _, without = plan_of(dataset, seed=7)
    assert without.validation_batches == [] and without.held_out == []
    assert without.num_train_images == 10 * 3 + 5 * 2


def test_check_lists_the_held_out_images_and_the_schedule(dataset):
    profile = profile_for(dataset / "train", dataset / "reg", validation_split=0.2, seed=1,
                          validate_every_n_steps=50, max_validation_steps=1)
    report = check_profile(profile)
    text = render_check_report(report.scan, report.plan, profile, report.problems)
    assert "Validation" in text
    assert "3 held-out image(s), never trained on; 1 batch(es) measured at timesteps 200, " \
           "400, 600, 800, every epoch and every 50 steps" in " ".join(text.split())
    for record in report.plan.held_out:
        assert record.path.name in text
    summary = plan_summary(report.plan)
    assert summary["validation"]["images"] == 3
    assert {f["name"]: f["held_out"] for f in summary["folders"]}["3_char"] == 2


def test_validation_split_of_one_or_more_is_refused_by_name(dataset):
    profile = profile_for(dataset / "train", validation_split=1.0)
    problems = profile_rules(profile)
    assert any(p.key == "validation_split" and "leaves none to train on" in p.message
               for p in problems)


def test_advisories_for_a_split_that_holds_out_nothing_and_options_without_split(tmp_path):
    make_folder(tmp_path / "train", "3_char", 4)
    profile = profile_for(tmp_path / "train", validation_split=0.1)
    notes = [p.message for p in check_profile(profile).warnings]
    assert any("holds out no image" in n for n in notes)
    profile = profile_for(tmp_path / "train", validate_every_n_steps=10)
    notes = [p.message for p in check_profile(profile).warnings]
    assert any("validate_every_n_steps` has no effect without validation_split" in n
               for n in notes)


def test_dataset_config_splits_per_dataset(tmp_path):
    make_folder(tmp_path / "a", "x", 10)
    make_folder(tmp_path / "b", "y", 10, stem="b")
    data = {"general": {"validation_seed": 4},
            "datasets": [{"validation_split": 0.2, "subsets": [{"image_dir": "a/x"}]},
                         {"subsets": [{"image_dir": "b/y"}]}]}
    config = tmp_path / "ds.toml"
    import tomli_w

    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    profile = profile_for(tmp_path / "train", dataset_config=str(config),
                          validation_split=0.1, seed=99)
    plan = make_plan(profile, scan_profile(profile))
    held = plan.held_out
    assert sum(1 for r in held if r.path.parent.name == "x") == 2  # its own 0.2
    assert sum(1 for r in held if r.path.parent.name == "y") == 1  # the profile's 0.1
    assert [d.validation_split for d in plan.datasets] == [0.2, 0.1]
    assert split_held_out(10, 0.2, 4) == {i for i, r in enumerate(
        sorted((tmp_path / "a" / "x").glob("*.png"))) if r in {h.path for h in held}}


def test_dataset_config_refuses_a_split_that_leaves_nothing():
    with pytest.raises(ProfileError) as caught:
        dataset_config_from_dict({"datasets": [{"validation_split": 1.0,
                                                "subsets": [{"image_dir": "a"}]}]},
                                 Path("/cfg/ds.toml"), DatasetSection(), 1)
    assert "`datasets[0].validation_split` = 1.0 holds out every image" in caught.value.message
    with pytest.raises(ProfileError) as caught:
        dataset_config_from_dict({"datasets": [{"validation_split": 1.5,
                                                "subsets": [{"image_dir": "a"}]}]},
                                 Path("/cfg/ds.toml"), DatasetSection(), 1)
    assert "`datasets[0].validation_split` = 1.5 is out of range" in caught.value.message


def test_metadata_records_the_validation_settings(dataset):
    from lora_core.saving.metadata import RunInfo, training_metadata

    profile, plan = plan_of(dataset, validation_split=0.2, seed=5, validate_every_n_epochs=2,
                            max_validation_steps=3)
    run = RunInfo(session_id=1, started_at=0.0, seed=5, output_name="x", model_name="m",
                  model_file=None, optimizer_repr="o", warmup_steps=0, max_train_steps=1,
                  num_epochs=1, num_processes=1)
    meta = training_metadata(profile, plan, run)
    assert meta["ss_num_validation_images"] == "3"
    assert meta["ss_validation_split"] == "0.2"
    assert meta["ss_validation_seed"] == "5"
    assert meta["ss_validate_every_n_epochs"] == "2"
    assert meta["ss_max_validation_steps"] == "3"
    assert meta["ss_validate_every_n_steps"] == "None"


def test_trackers_use_sd_scripts_names():
    step = ValidationMeasured(step=30, epoch=2, kind="step", loss=0.5, divergence=0.1, images=3)
    epoch = ValidationMeasured(step=40, epoch=2, kind="epoch", loss=0.4, divergence=0.0,
                               images=3)
    assert scalars_of(step) == (30, {"loss/validation/step_average": 0.5,
                                     "loss/validation/step_divergence": 0.1})
    assert scalars_of(epoch) == (2, {"loss/validation/epoch_average": 0.4,
                                     "loss/validation/epoch_divergence": 0.0})
