"""sd-scripts dataset_config files against kohya-compat.md §2 (format, resolution order,
levels), §1.4 (reg balancing per dataset), §4.4 (batching per dataset) and §7.2 (ss_datasets).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lora_core.checks import check_profile, scan_profile
from lora_core.checks.dataset import scan_notes
from lora_core.checks.report import render_check_report
from lora_core.dataset.dataset_config import dataset_config_from_dict, load_dataset_config
from lora_core.dataset.plan import epoch_batches, make_plan, plan_summary
from lora_core.errors import DatasetError, ProfileError
from lora_core.profile import DatasetSection, Profile
from lora_core.saving.metadata import datasets_metadata
from lora_core.values import Resolution
from tests.core.dataset_helpers import make_folder

CONFIG = """
[general]
shuffle_caption = true
caption_extension = ".caption"
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 2
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "../data/sks_dog"
  class_tokens = "sks dog"
  num_repeats = 3
  caption_prefix = "photo of"

  [[datasets.subsets]]
  image_dir = "../data/reg_dog"
  class_tokens = "dog"
  is_reg = true

[[datasets]]
resolution = [768, 512]
batch_size = 1

  [[datasets.subsets]]
  image_dir = "../data/wide"
  caption_extension = ".txt"
  num_repeats = 2
  enable_wildcard = true
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three image folders under data/ and the config above in config/ds.toml."""
    make_folder(tmp_path / "data", "sks_dog", 3, size=(512, 512), captions=".caption")
    make_folder(tmp_path / "data", "reg_dog", 4, size=(512, 512), captions=None)
    wide = make_folder(tmp_path / "data", "wide", 2, size=(768, 512), captions=None)
    for i in range(2):
        (wide / f"img{i:02d}.txt").write_text(f"red{i}, car\n\n  blue{i}, bike  \n",
                                              encoding="utf-8")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "ds.toml").write_text(CONFIG, encoding="utf-8")
    return tmp_path


def make_profile(root: Path, config: str = "config/ds.toml", **dataset: object) -> Profile:
    profile = Profile(base_dir=root)
    profile.dataset.dataset_config = config
    profile.dataset.caption_dropout_rate = 0.1  # only the profile sets this one
    for key, value in dataset.items():
        setattr(profile.dataset, key, Resolution.parse(value) if key == "resolution" else value)
    profile.training.train_batch_size = 7  # every dataset sets batch_size, so unused
    profile.saving.output_dir = str(root / "out")
    profile.saving.output_name = "mylora"
    return profile


def config_errors(data: object, **dataset: object) -> str:
    ds = DatasetSection(**dataset)
    with pytest.raises(ProfileError) as caught:
        dataset_config_from_dict(data, Path("/cfg/ds.toml"), ds, 1)
    assert "/cfg/ds.toml" in caught.value.message
    return caught.value.message


# ---------------------------------------------------------------------------------------
# Resolution order and subsets


def test_values_resolve_subset_then_dataset_then_general_then_profile(project):
    profile = make_profile(project)
    scan = scan_profile(profile)
    config = scan.config
    assert [d.resolution for d in config.datasets] == [(512, 512), (768, 512)]
    assert [d.batch_size for d in config.datasets] == [2, 1]
    dog, reg = config.datasets[0].subsets
    # Relative image_dir paths are relative to the config file's folder, not the profile's.
    assert dog.image_dir == project / "data" / "sks_dog"
    assert (dog.num_repeats, dog.class_tokens, dog.is_reg) == (3, "sks dog", False)
    assert (reg.num_repeats, reg.class_tokens, reg.is_reg) == (1, "dog", True)
    options = dog.options
    assert options.caption_prefix == "photo of"  # subset
    assert options.keep_tokens == 2  # dataset (over general's 1)
    assert options.shuffle_caption is True  # general
    assert options.caption_extension == ".caption"  # general (over the profile's .txt)
    assert options.caption_dropout_rate == 0.1  # profile
    assert dog.sources == {"caption_prefix": "datasets[0].subsets[0].caption_prefix",
                           "keep_tokens": "datasets[0].keep_tokens",
                           "shuffle_caption": "general.shuffle_caption",
                           "caption_extension": "general.caption_extension",
                           "num_repeats": "datasets[0].subsets[0].num_repeats",
                           "class_tokens": "datasets[0].subsets[0].class_tokens"}
    wide = config.datasets[1].subsets[0]
    assert wide.options.keep_tokens == 1  # general: datasets[0]'s value is not inherited
    assert wide.options.caption_extension == ".txt" and wide.options.enable_wildcard
    assert wide.options.caption_prefix == "" and wide.class_tokens == ""

    # The scan reads each subset with its own options.
    by_name = {s.name: s for s in scan.subsets}
    assert by_name["sks_dog"].options is dog.options
    assert [r.caption for r in by_name["sks_dog"].images] == ["tag0, common", "tag1, common",
                                                              "tag2, common"]
    assert {r.caption for r in by_name["reg_dog"].images} == {"dog"}  # class tokens
    assert by_name["reg_dog"].is_reg and by_name["wide"].dataset_index == 1


def test_batch_size_falls_back_to_train_batch_size(project):
    text = CONFIG.replace("batch_size = 1\n", "")
    (project / "config" / "ds.toml").write_text(text, encoding="utf-8")
    profile = make_profile(project)
    assert [d.batch_size for d in scan_profile(profile).config.datasets] == [2, 7]


def test_wildcard_captions_keep_every_line_and_are_not_an_advisory(project):
    scan = scan_profile(make_profile(project))
    wide = next(s for s in scan.subsets if s.name == "wide")
    assert [r.caption for r in wide.images] == ["red0, car\nblue0, bike", "red1, car\nblue1, bike"]
    assert wide.multiline_captions == []
    assert not any("more than one line" in note for note in [n.text() for n in scan_notes(scan)])
    # The raw (joined) caption is what tag counts see, as in sd-scripts.
    assert wide.tag_frequency["car\nblue0"] == 1


def test_json_form_gives_the_same_config(project):
    toml_config = scan_profile(make_profile(project)).config
    data = {
        "general": {"shuffle_caption": True, "caption_extension": ".caption", "keep_tokens": 1},
        "datasets": [
            {"resolution": 512, "batch_size": 2, "keep_tokens": 2, "subsets": [
                {"image_dir": "../data/sks_dog", "class_tokens": "sks dog", "num_repeats": 3,
                 "caption_prefix": "photo of"},
                {"image_dir": "../data/reg_dog", "class_tokens": "dog", "is_reg": True,
                 "caption_prefix": None}]},  # null means unset
            {"resolution": [768, 512], "batch_size": 1, "subsets": [
                {"image_dir": "../data/wide", "caption_extension": ".txt", "num_repeats": 2,
                 "enable_wildcard": True}]}]}
    (project / "config" / "ds.json").write_text(json.dumps(data), encoding="utf-8")
    json_config = scan_profile(make_profile(project, "config/ds.json")).config
    assert json_config.datasets == toml_config.datasets


# ---------------------------------------------------------------------------------------
# Plan: per-dataset buckets, batch sizes and reg balancing


def test_plan_balances_buckets_and_batches_each_dataset_alone(project):
    profile = make_profile(project, prior_loss_weight=0.5)
    profile.training.max_train_epochs = 2
    scan = scan_profile(profile)
    plan = make_plan(profile, scan)
    first, second = plan.datasets
    # §1.4 per dataset: 4 reg images balanced against datasets[0]'s 9 train samples only
    # (against all 13 it would be [4, 3, 3, 3]).
    reg = next(s for s in plan.subsets if s.is_reg)
    assert reg.effective_repeats == [3, 2, 2, 2]
    assert (first.num_train_images, first.num_reg_images, first.num_reg_samples) == (9, 4, 9)
    assert (second.num_train_images, second.num_reg_images) == (4, 0)
    assert (plan.num_train_images, plan.num_reg_images, plan.num_reg_samples) == (13, 4, 9)
    # Each dataset buckets with its own resolution: (768, 512) exists only for datasets[1]
    # (with resolution 512 a 3:2 image would go to 768x320).
    assert first.bucket_counts == {(512, 512): 18}
    assert second.bucket_counts == {(768, 512): 4}
    assert plan.bucket_counts == {(512, 512): 18, (768, 512): 4}
    # ceil(18 / 2) + ceil(4 / 1): each dataset's own batch size.
    assert (first.batches_per_epoch, second.batches_per_epoch) == (9, 4)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.max_train_steps) == (13, 13, 26)
    assert plan.batch_size == 2 and plan.dataset_config == project / "config" / "ds.toml"
    # Items know their subset (and so their options), dataset and bucket.
    for item in plan.items:
        subset = plan.subsets[item.subset_index].scan
        assert item.dataset_index == subset.dataset_index
        assert item.loss_weight == (0.5 if subset.is_reg else 1.0)
    wide_items = [it for it in plan.items if it.dataset_index == 1]
    assert {plan.subsets[it.subset_index].scan.options.caption_extension
            for it in wide_items} == {".txt"}
    assert {(it.bucket_reso, it.resized_size) for it in wide_items} == {((768, 512), (768, 512))}
    summary = json.loads(json.dumps(plan_summary(plan)))
    assert [d["batch_size"] for d in summary["datasets"]] == [2, 1]


def test_epoch_batches_stay_in_one_bucket_of_one_dataset_and_interleave(project):
    profile = make_profile(project)
    plan = make_plan(profile, scan_profile(profile))
    batches = epoch_batches(plan, seed=3, epoch=1)
    assert batches == epoch_batches(plan, seed=3, epoch=1)
    assert batches != epoch_batches(plan, seed=3, epoch=2)
    assert len(batches) == plan.batches_per_epoch == 13
    for batch in batches:
        datasets = {plan.items[i].dataset_index for i in batch}
        assert len(datasets) == 1
        assert len({plan.items[i].bucket_reso for i in batch}) == 1
        assert len(batch) <= plan.datasets[datasets.pop()].batch_size
    assert Counter(len(b) for b in batches) == {2: 9, 1: 4}
    counts = Counter(i for batch in batches for i in batch)
    assert counts == {i: item.repeats for i, item in enumerate(plan.items)}
    # The concatenated datasets are shuffled together (sd-scripts' DataLoader shuffle).
    orders = {tuple(plan.items[b[0]].dataset_index for b in epoch_batches(plan, seed, 1))
              for seed in range(5)}
    assert all(order != tuple(sorted(order)) for order in orders)


def test_datasets_metadata_has_sd_scripts_shapes(project):
    profile = make_profile(project)
    plan = make_plan(profile, scan_profile(profile))
    fields = datasets_metadata(plan)
    assert set(fields) == {"ss_datasets", "ss_tag_frequency", "ss_dataset_dirs"}
    first, second = json.loads(fields["ss_datasets"])
    assert (first["batch_size_per_device"], second["batch_size_per_device"]) == (2, 1)
    assert (first["resolution"], second["resolution"]) == ([512, 512], [768, 512])
    assert (first["num_train_images"], first["num_reg_images"]) == (9, 4)
    assert (first["min_bucket_reso"], first["max_bucket_reso"]) == (256, 1024)
    # Bucket index = position in the dataset's sorted predefined list (8 of 17 for 512).
    assert first["bucket_info"]["buckets"] == {"8": {"resolution": [512, 512], "count": 18}}
    assert first["tag_frequency"]["reg_dog"] == {"dog": 4}
    dog, reg = first["subsets"]
    assert dog == {"img_count": 3, "num_repeats": 3, "color_aug": False, "flip_aug": False,
                   "random_crop": False, "shuffle_caption": True, "keep_tokens": 2,
                   "keep_tokens_separator": "", "secondary_separator": None,
                   "enable_wildcard": False, "caption_prefix": "photo of",
                   "caption_suffix": None, "resize_interpolation": None,
                   "image_dir": "sks_dog", "class_tokens": "sks dog", "is_reg": False}
    assert reg["is_reg"] and reg["class_tokens"] == "dog"
    assert second["subsets"][0]["class_tokens"] is None  # unset, as sd-scripts writes it
    assert json.loads(fields["ss_dataset_dirs"]) == {  # reg subsets are left out
        "sks_dog": {"n_repeats": 3, "img_count": 3}, "wide": {"n_repeats": 2, "img_count": 2}}
    tags = json.loads(fields["ss_tag_frequency"])
    assert set(tags) == {"sks_dog", "reg_dog", "wide"}


def test_one_folder_in_two_datasets_is_named_twice_in_dataset_dirs(project):
    config = {"datasets": [
        {"resolution": 512, "subsets": [{"image_dir": "../data/sks_dog", "num_repeats": 2}]},
        {"resolution": 768, "enable_bucket": False,
         "subsets": [{"image_dir": "../data/sks_dog"}]}]}
    (project / "config" / "multi.json").write_text(json.dumps(config), encoding="utf-8")
    profile = make_profile(project, "config/multi.json")
    plan = make_plan(profile, scan_profile(profile))
    fields = datasets_metadata(plan)
    assert json.loads(fields["ss_dataset_dirs"]) == {
        "sks_dog": {"n_repeats": 2, "img_count": 3},
        "sks_dog (2)": {"n_repeats": 1, "img_count": 3}}
    second = json.loads(fields["ss_datasets"])[1]
    assert second["bucket_info"] is None and second["min_bucket_reso"] is None
    # The same images at two resolutions: 512 buckets, then one 768x768 bucket.
    assert [d.bucket_counts for d in plan.datasets] == [{(512, 512): 6}, {(768, 768): 3}]


def test_duplicate_image_dir_in_a_dataset_is_ignored_with_a_warning(project):
    config = {"datasets": [{"subsets": [
        {"image_dir": "../data/sks_dog", "num_repeats": 2},
        {"image_dir": str(project / "data" / "sks_dog"), "num_repeats": 5},
        {"image_dir": "../data/wide", "num_repeats": 0}]}]}
    loaded = dataset_config_from_dict(config, project / "config" / "x.toml",
                                      DatasetSection(), 1)
    assert [s.num_repeats for s in loaded.datasets[0].subsets] == [2]
    assert any("datasets[0].subsets[1] repeats the image_dir of datasets[0].subsets[0]" in w
               for w in loaded.warnings)
    assert any("datasets[0].subsets[2].num_repeats = 0" in w for w in loaded.warnings)
    assert [path.name for path, _ in loaded.skipped] == ["sks_dog", "wide"]


# ---------------------------------------------------------------------------------------
# Messages that teach


def test_unknown_key_names_its_place_and_the_closest_key():
    message = config_errors({"datasets": [{"subsets": [
        {"image_dir": "a"}, {"image_dir": "b", "num_repeat": 3}]}]})
    assert "`datasets[0].subsets[1].num_repeat`: unknown key; did you mean `num_repeats`?" \
        in message


def test_key_at_the_wrong_level_says_where_it_belongs():
    message = config_errors({
        "resolution": 512,
        "general": {"is_reg": True},
        "datasets": [{"image_dir": "x", "subsets": [{"image_dir": "a", "batch_size": 2}]}]})
    assert "`datasets[0].image_dir`: `image_dir` belongs in [[datasets.subsets]]" in message
    assert "`general.is_reg`: `is_reg` belongs in [[datasets.subsets]]" in message
    assert ("`datasets[0].subsets[0].batch_size`: `batch_size` belongs in [[datasets]] or "
            "[general]") in message
    assert "`resolution`: keys at the top of the file are not read; put it under [general]" \
        in message
    assert "has 4 problems" in message  # every problem at once


def test_missing_image_dir_and_missing_tables():
    message = config_errors({"datasets": [
        {"subsets": [{"num_repeats": 2}, {"image_dir": None}, {"image_dir": " "}]}, {}]})
    assert "`datasets[0].subsets[0]`: `image_dir` is required" in message
    assert "`datasets[0].subsets[1]`: `image_dir` is required" in message  # JSON null
    assert "`datasets[0].subsets[2].image_dir` is empty" in message
    assert "`datasets[1]` has no [[datasets.subsets]]" in message
    assert "the file has no [[datasets]]" in config_errors({"general": {}})


@pytest.mark.parametrize(("table", "expected"), [
    ({"batch_size": "4"}, '`datasets[0].batch_size` = "4" has the wrong type: it must be an '
                          "integer"),
    ({"resolution": "768,512"}, "`datasets[0].resolution` = \"768,512\" has the wrong type: it "
                                "must be one integer like 512, or [width, height]"),
    ({"shuffle_caption": 1}, "`datasets[0].shuffle_caption` = 1 has the wrong type: it must "
                             "be true or false"),
    ({"caption_dropout_rate": 1.5}, "`datasets[0].caption_dropout_rate` = 1.5 is out of range"),
    ({"learning_rate": 1e-4}, "`datasets[0].learning_rate`: `learning_rate` is a training "
                              "option, not a dataset config key: set `[optimizer] "
                              "learning_rate` in the profile"),
    ({"network_multiplier": 0.5}, "`datasets[0].network_multiplier` = 0.5: `network_multiplier` "
                                  "is not supported yet"),
])
def test_wrong_types_ranges_and_foreign_keys(table, expected):
    message = config_errors({"datasets": [{**table, "subsets": [{"image_dir": "a"}]}]})
    assert expected in message


def test_keys_sd_scripts_has_but_lora_train_does_not_are_not_supported_yet():
    message = config_errors({"datasets": [{"subsets": [
        {"metadata_file": "meta.json"},
        {"image_dir": "a", "face_crop_aug_range": [2.0, 3.0]}]}]})
    assert "`datasets[0].subsets[0].metadata_file` = \"meta.json\": fine-tuning subsets " \
           "(metadata_file" in message
    assert "image_dir` is required" not in message  # the real problem is metadata_file
    assert "`datasets[0].subsets[1].face_crop_aug_range` = [2.0, 3.0]: " \
           "`face_crop_aug_range` is not supported yet" in message


def test_unsupported_keys_at_their_neutral_value_are_accepted():
    data = {"general": {"network_multiplier": 1.0, "cache_info": False},
            "datasets": [{"subsets": [{"image_dir": "a", "custom_attributes": {}}]}]}
    loaded = dataset_config_from_dict(data, Path("/cfg/ds.toml"), DatasetSection(), 1)
    assert loaded.datasets[0].subsets[0].image_dir == Path("/cfg/a")


def test_bucket_rules_name_the_key_that_set_the_value():
    message = config_errors({"general": {"min_bucket_reso": 768},
                             "datasets": [{"resolution": 1024, "subsets": [{"image_dir": "a"}]},
                                          {"resolution": 512, "subsets": [{"image_dir": "b"}]}]})
    assert ("`datasets[1]`: min_bucket_reso = 768 (from `general.min_bucket_reso`) must not be "
            "larger than the smaller side of its resolution 512x512 (from "
            "`datasets[1].resolution`)") in message
    assert "datasets[0]`: min_bucket_reso" not in message


def test_cached_latents_refuse_pixel_changing_subset_options():
    message = config_errors({"datasets": [{"subsets": [{"image_dir": "a", "color_aug": True}]}]},
                            cache_latents=True)
    assert "`datasets[0].subsets[0].color_aug` = true changes the pixels every step" in message


def test_file_problems_name_the_file(tmp_path):
    ds = DatasetSection()
    bad = tmp_path / "ds.toml"
    bad.write_text("[[datasets]\n", encoding="utf-8")
    with pytest.raises(ProfileError, match="ds.toml is not valid TOML"):
        load_dataset_config(bad, ds, 1)
    with pytest.raises(ProfileError, match="file not found"):
        load_dataset_config(tmp_path / "nope.toml", ds, 1)
    other = tmp_path / "ds.yaml"
    other.write_text("", encoding="utf-8")
    with pytest.raises(ProfileError, match="must be a .toml or .json"):
        load_dataset_config(other, ds, 1)


def test_missing_image_folder_is_a_dataset_error_naming_the_key(project):
    text = CONFIG.replace("../data/wide", "../data/wiide")
    (project / "config" / "ds.toml").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=r"`datasets\[1\].subsets\[0\].image_dir` = .*wiide "
                                           "does not exist"):
        scan_profile(make_profile(project))


def test_no_train_images_is_a_problem_naming_the_config(project):
    config = {"datasets": [{"subsets": [{"image_dir": "../data/reg_dog", "is_reg": True}]}]}
    (project / "config" / "reg.json").write_text(json.dumps(config), encoding="utf-8")
    report = check_profile(make_profile(project, "config/reg.json"))
    assert report.plan is None
    assert any("no usable training images in any train subset of dataset_config" in p.message
               and p.field == ("dataset", "dataset_config") for p in report.errors)


# ---------------------------------------------------------------------------------------
# Check report


def test_check_report_shows_datasets_and_options_that_differ(project):
    profile = make_profile(project)
    report = check_profile(profile)
    text = render_check_report(report.scan, report.plan, profile, report.problems)
    assert f"Dataset config: {project / 'config' / 'ds.toml'} (2 datasets)" in text
    assert "datasets[0]: resolution 512x512, batch size 2" in text
    assert "datasets[1]: resolution 768x512, batch size 1" in text
    assert "reg/reg_dog" in text and "repeats 1 -> 2-3" in text
    options = text[text.index("options that differ"):]
    assert 'caption_prefix = "photo of" (datasets[0].subsets[0])' in options
    assert "keep_tokens = 2 (datasets[0])" in options
    assert "shuffle_caption = true (general)" in options
    assert "caption_dropout_rate" not in options  # the profile's own value
    assert "batch size 2 (datasets[0]) / 1 (datasets[1])" in text
    assert "datasets[1]: aspect-ratio buckets, resolution 768x512" in text
    assert max(len(line) for line in text.splitlines() if str(project) not in line) <= 80
