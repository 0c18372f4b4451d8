"""Dataset folder scanning against kohya-compat.md §1 and §3 (tag frequency)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lora_core.checks.dataset import scan_notes, scan_problems
from lora_core.dataset.scan import count_tags, parse_folder_name, scan_dataset
from lora_core.dataset.subset_options import SubsetOptions
from lora_core.errors import DatasetError
from tests.core.dataset_helpers import make_folder, make_image, png_bytes, snapshot


def problems(result) -> list[str]:
    """The scan's errors as text (checks.dataset)."""
    found = scan_problems(result)
    assert all(p.is_error and p.section == "dataset" for p in found)
    return [p.text() for p in found]


def advisories(result) -> list[str]:
    found = scan_notes(result)
    assert not any(p.is_error for p in found)
    return [p.text() for p in found]


def scan(train: Path, reg: Path | None = None, ext: str = ".txt", min_side: int = 0):
    return scan_dataset(train, reg, ext, min_side)


@pytest.mark.parametrize(("name", "expected"), [
    ("10_sks dog", (10, "sks dog")),
    ("5_my_char", (5, "my_char")),
    ("1_woman", (1, "woman")),
    ("10", (10, "")),
    ("0_zero", (0, "zero")),
    ("-1_neg", (-1, "neg")),
    ("photos", None),
    ("abc_10", None),
    ("_10_x", None),
])
def test_parse_folder_name(name, expected):
    assert parse_folder_name(name) == expected


def test_scan_reads_sizes_captions_and_class_tokens(tmp_path):
    folder = tmp_path / "train" / "10_sks dog"
    make_image(folder / "b.png", 640, 480)
    make_image(folder / "a.JPG", 300, 200, fmt="JPEG")
    make_image(folder / "c.WebP", 64, 96, fmt="WEBP")
    (folder / "a.txt").write_text("  sks dog, red collar  \nsecond line\n", encoding="utf-8")
    (folder / "notes.md").write_text("not an image", encoding="utf-8")
    (folder / ".hidden.png").write_bytes(png_bytes(8, 8))  # sd-scripts' glob skips it
    result = scan(tmp_path / "train")
    [subset] = result.train
    assert (subset.name, subset.repeats, subset.class_tokens) == ("10_sks dog", 10, "sks dog")
    assert [r.path.name for r in subset.images] == ["a.JPG", "b.png", "c.WebP"]
    a, b, c = subset.images
    assert (a.width, a.height, b.width, b.height, c.width, c.height) == (300, 200, 640, 480,
                                                                         64, 96)
    assert a.caption == "sks dog, red collar" and a.caption_file == folder / "a.txt"
    assert b.caption == "sks dog" and b.caption_file is None
    assert subset.missing_captions == [folder / "b.png", folder / "c.WebP"]
    assert subset.multiline_captions == [folder / "a.txt"]
    assert subset.captions_found == 1
    assert result.reg == [] and result.skipped == []


def test_subfolders_are_sorted_and_deeper_folders_are_not_read(tmp_path):
    train = tmp_path / "train"
    make_folder(train, "2_b", 1)
    make_folder(train, "1_a", 1)
    make_folder(train / "2_b", "nested", 3)
    result = scan(train)
    assert [s.name for s in result.train] == ["1_a", "2_b"]
    assert len(result.train[1].images) == 1


def test_folders_without_repeats_are_skipped_with_a_reason(tmp_path):
    train = tmp_path / "train"
    make_folder(train, "10_good", 2)
    make_folder(train, "photos", 2)
    make_folder(train, "0_zero", 2)
    result = scan(train)
    assert [s.name for s in result.train] == ["10_good"]
    skipped = dict((p.name, reason) for p, reason in result.skipped)
    assert set(skipped) == {"photos", "0_zero"}
    assert "number of repeats" in skipped["photos"]
    assert "less than 1" in skipped["0_zero"]
    assert any("photos" in w for w in result.warnings)
    assert any("photos" in a for a in advisories(result))


def test_famous_mistake_names_the_parent_folder(tmp_path):
    concept = tmp_path / "dataset" / "10_sks dog"
    make_folder(concept.parent, concept.name, 3)
    with pytest.raises(DatasetError) as info:
        scan(concept)
    assert "looks like a concept folder" in info.value.message
    assert "contains 3 image(s) directly" in info.value.message
    assert info.value.hint.startswith(f"set train_data_dir to {tmp_path / 'dataset'}")


def test_famous_mistake_without_images_still_names_the_parent(tmp_path):
    concept = tmp_path / "5_char"
    (concept / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        scan(concept)
    assert "concept folder" in info.value.message
    assert f"set train_data_dir to {tmp_path}" in info.value.hint


def test_one_level_too_high_names_the_training_folder_not_reg(tmp_path):
    """The example dataset's layout (train/10_x, reg/1_y) with train_data_dir at its top:
    the hint names train/ for train_data_dir and tells reg/ apart (it once named reg/, the
    first folder by name, for train_data_dir; issue 24)."""
    make_folder(tmp_path / "train", "10_ohwx cube", 2)
    make_folder(tmp_path / "reg", "1_cube", 2)
    with pytest.raises(DatasetError) as info:
        scan(tmp_path)
    assert "one level deeper" in info.value.message
    assert "'10_ohwx cube'" in info.value.message and "'1_cube'" in info.value.message
    hint = info.value.hint
    assert hint.startswith(f"set train_data_dir to {tmp_path / 'train'} ")
    assert "training images" in hint
    assert f"{tmp_path / 'reg'} looks like regularization images" in hint
    assert f"set train_data_dir to {tmp_path / 'reg'}" not in hint
    # and the same layout named as reg_data_dir points at reg/
    other = tmp_path / "elsewhere"
    make_folder(other, "10_char", 1)
    with pytest.raises(DatasetError) as info:
        scan(other, tmp_path)
    assert info.value.hint.startswith(f"set reg_data_dir to {tmp_path / 'reg'} ")


def test_images_directly_in_train_dir_explain_the_convention(tmp_path):
    train = tmp_path / "train"
    for i in range(2):
        make_image(train / f"{i}.png")
    with pytest.raises(DatasetError) as info:
        scan(train)
    assert "contains 2 image(s) directly" in info.value.message
    assert "<repeats>_<name>" in info.value.message
    assert str(train / "10_mychar") in info.value.hint


def test_only_badly_named_subfolders_is_an_error_naming_them(tmp_path):
    train = tmp_path / "train"
    make_folder(train, "photos", 1)
    with pytest.raises(DatasetError) as info:
        scan(train)
    assert "\"photos\"" in info.value.message
    assert "10_photos" in info.value.hint


def test_loose_images_next_to_subfolders_are_a_warning(tmp_path):
    train = tmp_path / "train"
    make_folder(train, "1_a", 1)
    make_image(train / "stray.png")
    result = scan(train)
    assert any("1 image(s) directly inside" in w for w in result.warnings)


def test_missing_or_wrong_folders_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="train_data_dir does not exist") as info:
        scan(tmp_path / "nope")
    assert str(tmp_path / "nope") in info.value.message
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        scan(a_file)
    train = tmp_path / "train"
    make_folder(train, "1_a", 1)
    with pytest.raises(DatasetError, match="reg_data_dir does not exist") as info:
        scan(train, tmp_path / "reg")
    assert str(tmp_path / "reg") in info.value.message
    with pytest.raises(DatasetError, match="same folder"):
        scan(train, train)


def test_reg_folders_are_scanned_as_reg(tmp_path):
    make_folder(tmp_path / "train", "1_a", 1)
    make_folder(tmp_path / "reg", "1_person", 2, captions=None)
    result = scan(tmp_path / "train", tmp_path / "reg")
    [reg] = result.reg
    assert reg.is_reg and not result.train[0].is_reg
    assert [r.caption for r in reg.images] == ["person", "person"]


def test_captions_under_another_extension_are_reported(tmp_path):
    folder = make_folder(tmp_path / "train", "3_char", 2, captions=".caption")
    result = scan(tmp_path / "train", ext=".txt")
    [subset] = result.train
    assert subset.missing_captions == [folder / "img00.png", folder / "img01.png"]
    assert subset.other_extension_captions == [(folder / "img00.png", folder / "img00.caption"),
                                               (folder / "img01.png", folder / "img01.caption")]
    assert all(r.caption == "char" for r in subset.images)  # never silently used
    text = " ".join(advisories(result))
    assert 'caption_extension = ".caption"' in text
    # With the right extension they are read.
    assert scan(tmp_path / "train", ext=".caption").train[0].images[0].caption == "tag0, common"


def test_face_crop_naming_falls_back_to_the_shortened_stem(tmp_path):
    folder = tmp_path / "train" / "1_face"
    make_image(folder / "anna_100_120_64_64.png")
    make_image(folder / "bob_1_2_3_4.png")
    (folder / "anna.txt").write_text("anna", encoding="utf-8")
    (folder / "bob.txt").write_text("bob short", encoding="utf-8")
    (folder / "bob_1_2_3_4.txt").write_text("bob exact", encoding="utf-8")
    captions = {r.path.name: r.caption for r in scan(tmp_path / "train").train[0].images}
    assert captions == {"anna_100_120_64_64.png": "anna", "bob_1_2_3_4.png": "bob exact"}


def test_undecodable_image_is_a_problem_not_an_exception(tmp_path):
    folder = make_folder(tmp_path / "train", "1_a", 1)
    (folder / "broken.png").write_bytes(b"this is not a png")
    result = scan(tmp_path / "train")
    [subset] = result.train
    assert [p.name for p, _ in subset.undecodable] == ["broken.png"]
    assert "UnidentifiedImageError" in subset.undecodable[0][1]
    assert [r.path.name for r in subset.images] == ["img00.png"]
    assert any("broken.png" in p for p in problems(result))


def test_non_utf8_caption_is_a_problem(tmp_path):
    folder = make_folder(tmp_path / "train", "1_cafe", 1, captions=None)
    (folder / "img00.txt").write_bytes("caf\u00e9, table".encode("latin-1"))
    result = scan(tmp_path / "train")
    [subset] = result.train
    assert [p.name for p, _ in subset.bad_captions] == ["img00.txt"]
    assert "not UTF-8" in subset.bad_captions[0][1]
    assert subset.images[0].caption == "cafe"
    assert any("img00.txt" in p and "UTF-8" in p for p in problems(result))


def test_empty_caption_falls_back_to_class_tokens(tmp_path):
    folder = make_folder(tmp_path / "train", "1_cat", 2, captions=None)
    (folder / "img00.txt").write_bytes(b"")
    (folder / "img01.txt").write_bytes("\ufeffblack cat\r\nmore".encode())
    result = scan(tmp_path / "train")
    [subset] = result.train
    assert subset.empty_captions == [folder / "img00.txt"]
    assert [r.caption for r in subset.images] == ["cat", "black cat"]
    assert subset.bom_captions == [folder / "img01.txt"]
    assert subset.multiline_captions == [folder / "img01.txt"]
    assert problems(result) == []
    assert any("empty first line" in a for a in advisories(result))


def test_enable_wildcard_keeps_every_non_empty_line_in_folder_mode_too(tmp_path):
    folder = make_folder(tmp_path / "train", "1_cat", 2, captions=None)
    (folder / "img00.txt").write_text("\n black cat \r\n\nwhite cat\n", encoding="utf-8")
    (folder / "img01.txt").write_text("  \n\n", encoding="utf-8")
    options = SubsetOptions(caption_extension=".txt", enable_wildcard=True)
    result = scan_dataset(tmp_path / "train", None, ".txt", 0, options)
    [subset] = result.train
    # sd-scripts: every non-empty line, stripped, joined with "\n" (one is picked per step).
    assert [r.caption for r in subset.images] == ["black cat\nwhite cat", "cat"]
    assert subset.multiline_captions == [] and subset.empty_captions == [folder / "img01.txt"]
    assert subset.options is options
    assert not any("more than one line" in a for a in advisories(result))
    # Without it, the same file gives its first line only (here empty: class tokens).
    [plain] = scan(tmp_path / "train").train
    assert plain.images[0].caption == "cat" and plain.multiline_captions == [folder / "img00.txt"]


def test_too_small_images_are_listed(tmp_path):
    folder = tmp_path / "train" / "1_a"
    make_image(folder / "small.png", 200, 400)
    make_image(folder / "big.png", 256, 256)
    result = scan(tmp_path / "train", min_side=256)
    assert result.train[0].too_small == [folder / "small.png"]
    assert any("smaller than 256 px" in a for a in advisories(result))


def test_tag_frequency_counts_raw_captions_per_folder(tmp_path):
    folder = make_folder(tmp_path / "train", "2_sks dog", 4, captions=None)
    (folder / "img00.txt").write_text("Red Collar, sks dog,  grass", encoding="utf-8")
    (folder / "img01.txt").write_text("red collar,,sks dog", encoding="utf-8")
    (folder / "img02.txt").write_text("SKS DOG", encoding="utf-8")
    # img03 has no caption: the class tokens count as its tag.
    [subset] = scan(tmp_path / "train").train
    assert subset.tag_frequency == {"red collar": 2, "sks dog": 4, "grass": 1}
    assert count_tags(["a, b", " A ,", ""]) == {"a": 2, "b": 1}


def test_empty_subset_is_a_warning_and_no_images_is_a_problem(tmp_path):
    train = tmp_path / "train"
    (train / "5_empty").mkdir(parents=True)
    make_folder(train / "5_empty", "photos", 2)
    result = scan(train)
    assert result.train[0].images == []
    assert any("contains no images" in w and "photos/" in w for w in result.warnings)
    assert any("no usable training images" in p for p in problems(result))


def test_scan_never_writes_into_the_dataset(tmp_path):
    make_folder(tmp_path / "train", "10_a", 3)
    make_folder(tmp_path / "train", "3_b", 2, captions=".caption")
    make_folder(tmp_path / "reg", "1_c", 2, captions=None)
    (tmp_path / "train" / "10_a" / "bad.png").write_bytes(b"junk")
    before = snapshot(tmp_path)
    result = scan(tmp_path / "train", tmp_path / "reg", min_side=512)
    problems(result)
    advisories(result)
    assert snapshot(tmp_path) == before


def test_scanning_1000_images_is_fast(tmp_path):
    folder = tmp_path / "train" / "1_many"
    folder.mkdir(parents=True)
    data = png_bytes(32, 48)
    for i in range(1000):
        (folder / f"{i:04d}.png").write_bytes(data)
        if i % 2:
            (folder / f"{i:04d}.txt").write_text(f"tag{i % 7}, shared", encoding="utf-8")
    start = time.perf_counter()
    result = scan(tmp_path / "train")
    elapsed = time.perf_counter() - start
    assert len(result.train[0].images) == 1000
    assert result.train[0].captions_found == 500
    assert elapsed < 3.0, f"scan took {elapsed:.2f} s"
