"""Captioning tools (issue 16) with a tiny WD14-style tagger built here with the real
interface: ``model.onnx`` taking float32 NHWC BGR 0-255 pictures (32 px, read from the
model) and giving one sigmoid score per row of ``selected_tags.csv``.

The tagger looks at each channel's mean (x = mean / 255, BGR order):
  red_background   sigmoid(12 xR - 12 xG - 3)     pure red: ~1, white: 0.05
  blue_background  sigmoid(12 xB - 12 xG - 3)
  white_(theme)    sigmoid(12 xG - 6)             white: ~1, red: 0.002
  ^_^              sigmoid(12 xR - 6)             a kaomoji: its underscore stays
  cube_character   sigmoid(12 xB - 12 xG - 8)     character (4): blue 0.98, B=200 0.80
  always_there     sigmoid(5)                     general, for --undesired-tags
  general / sensitive (ratings) sigmoid(2) / sigmoid(-2)
so every expected caption below follows from the colours.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_core.captioning.files import UNDO
from lora_core.captioning.prepare import prepare_folder
from lora_core.captioning.tagger import TaggerOptions, caption_folder
from lora_core.captioning.tags import TagEdit, edit_tags, tag_table
from lora_core.cli import main

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TAGS = [("general", 9), ("sensitive", 9), ("red_background", 0), ("blue_background", 0),
        ("white_(theme)", 0), ("^_^", 0), ("cube_character", 4), ("always_there", 0)]
# rows: B, G, R weights on x = mean/255; then the bias
WEIGHTS = np.array([[0, 0, 0, 12, 0, 0, 12, 0],
                    [0, 0, -12, -12, 12, 0, -12, 0],
                    [0, 0, 12, 0, 0, 12, 0, 0]], dtype=np.float32) / 255.0
BIAS = np.array([2, -2, -3, -3, -6, -6, -8, 5], dtype=np.float32)


def make_tagger(folder: Path, size: int = 32, tags=TAGS, width: int | None = None) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    count = width or len(tags)
    weights, bias = WEIGHTS[:, :count], BIAS[:count]
    if count > len(TAGS):
        weights = np.pad(WEIGHTS, ((0, 0), (0, count - len(TAGS))))
        bias = np.pad(BIAS, (0, count - len(TAGS)))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["z0"]),
         helper.make_node("Add", ["z0", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["output"])],
        "tiny-tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", count])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    lines = ["tag_id,name,category,count"] + [f"{i},{name},{cat},100"
                                               for i, (name, cat) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def picture(path: Path, rgb, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix == ".png"}


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data" / "10_cube"
    picture(folder / "red.png", (255, 0, 0))
    picture(folder / "blue.png", (0, 0, 255))
    picture(folder / "white.png", (255, 255, 255))
    picture(folder / "wide.png", (255, 0, 0), size=(32, 8))  # padded with white
    picture(folder / "paleblue.png", (0, 0, 200))
    return tmp_path / "data"


def captions(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted(folder.rglob("*.txt"))}


def test_tagging_follows_the_colours(dataset, tmp_path, state_dir):
    model = make_tagger(tmp_path / "tagger")
    images = digest(dataset)
    changes = caption_folder(dataset, str(model), TaggerOptions())
    assert len(changes) == 5
    got = captions(dataset)
    assert got["red"] == "red background, ^_^, always there"  # BGR read right; ^_^ kept
    # by score: blue 0.9999, always_there 0.993, the character 0.982
    assert got["blue"] == "blue background, always there, cube character"
    assert got["white"] == r"white \(theme\), ^_^, always there"  # escaped brackets
    assert "white \\(theme\\)" in got["wide"]  # padded to a white square, not black
    assert "cube character" not in got["paleblue"]  # 0.80 < the character threshold 0.85
    assert digest(dataset) == images  # pictures byte-identical


def test_tagger_options(dataset, tmp_path, state_dir):
    model = make_tagger(tmp_path / "tagger")
    options = TaggerOptions(character_threshold=0.7, use_rating_tags=True,
                            character_tags_first=True, remove_underscore=False,
                            escape_brackets=False, undesired_tags=["always_there"],
                            prefix=["ohwx cube"])
    caption_folder(dataset, str(model), options)
    got = captions(dataset)
    assert got["paleblue"] == "ohwx cube, general, cube_character, blue_background"
    assert got["white"] == "ohwx cube, general, white_(theme), ^_^"


def test_only_missing_overwrite_append_dry_run_and_undo(dataset, tmp_path, state_dir):
    model = make_tagger(tmp_path / "tagger")
    red = dataset / "10_cube" / "red.txt"
    red.write_text("ohwx cube, my own words\n")
    caption_folder(dataset, str(model), TaggerOptions())
    assert red.read_text().strip() == "ohwx cube, my own words"  # only missing ones
    before = captions(dataset)
    planned = caption_folder(dataset, str(model), TaggerOptions(mode="overwrite"),
                             dry_run=True)
    assert captions(dataset) == before and len(planned) == 5
    caption_folder(dataset, str(model), TaggerOptions(mode="append"))
    assert red.read_text().strip() == \
        "ohwx cube, my own words, red background, ^_^, always there"
    edit_tags(dataset, TagEdit(add=["ohwx cube"], first=True, remove=["always there"]))
    assert captions(dataset)["blue"].startswith("ohwx cube, blue background")
    # two undos: the edit, then the append; a third the first tagging
    assert main(["tags", str(dataset), "--undo"]) == 0
    assert red.read_text().strip() == \
        "ohwx cube, my own words, red background, ^_^, always there"
    assert main(["caption", str(dataset), "--undo"]) == 0
    assert captions(dataset) == before
    UNDO.undo(dataset)
    assert captions(dataset) == {"red": "ohwx cube, my own words"}  # as it was at first


def test_a_cancel_keeps_the_finished_batches_and_no_half_caption(dataset, tmp_path, state_dir):
    model = make_tagger(tmp_path / "tagger")
    batches = []

    def cancel_after_the_first_batch() -> bool:
        return bool(batches)

    changes = caption_folder(dataset, str(model), TaggerOptions(batch_size=2),
                             progress=lambda done, total: batches.append(done),
                             cancelled=cancel_after_the_first_batch)
    assert batches == [2] and len(changes) == 2  # 5 pictures, stopped after 2
    written = captions(dataset)
    assert written == {"blue": "blue background, always there, cube character",
                       "paleblue": "blue background, always there"}  # whole captions


def test_undo_leaves_a_caption_changed_by_hand(dataset, tmp_path, state_dir, capsys):
    model = make_tagger(tmp_path / "tagger")
    caption_folder(dataset, str(model), TaggerOptions())
    blue = dataset / "10_cube" / "blue.txt"
    blue.write_text("edited by hand\n")
    assert main(["caption", str(dataset), "--undo"]) == 0
    assert "left alone (changed since)" in capsys.readouterr().out
    assert blue.read_text() == "edited by hand\n"
    assert not (dataset / "10_cube" / "red.txt").exists()


def test_tag_editor_operations(tmp_path, state_dir):
    folder = tmp_path / "5_hero"
    for name, caption in (("a", "1girl, smile, red hair, smile"), ("b", "red hair, sword"),
                          ("c", None)):
        picture(folder / f"{name}.png", (10, 20, 30))
        if caption:
            (folder / f"{name}.txt").write_text(caption)
    edit = TagEdit(add=["hero"], first=True, replace={"1girl": "woman"}, remove=["sword"],
                   move_first=["red hair"], dedupe=True)
    changes, missing = edit_tags(folder, edit)
    assert missing == 1 and not (folder / "c.txt").exists()
    got = captions(folder)
    assert got["a"] == "red hair, hero, woman, smile"
    assert got["b"] == "red hair, hero"
    assert tag_table(folder) == [("hero", 2), ("red hair", 2), ("smile", 1), ("woman", 1)]
    assert main(["tags", str(folder), "--undo"]) == 0
    assert captions(folder) == {"a": "1girl, smile, red hair, smile", "b": "red hair, sword"}


def test_prepare_lays_out_the_folder(tmp_path, capsys):
    source = tmp_path / "raw"
    for i in range(6):
        picture(source / f"{i}.png", (i, 0, 0))
    (source / "0.txt").write_text("ohwx cube")
    before = digest(source)
    folder, repeats, images, placed = prepare_folder(
        source, "ohwx cube", tmp_path / "train", target_steps=600, epochs=10, batch_size=2)
    assert repeats == 20 and folder.name == "20_ohwx cube"  # 600 x 2 / (6 x 10)
    assert (images, placed) == (6, 7)  # the caption goes along
    assert sorted(p.name for p in folder.iterdir())[:2] == ["0.png", "0.txt"]
    assert digest(source) == before and len(list(source.iterdir())) == 7  # never moved
    assert main(["prepare", str(source), "--name", "x", "--repeats", "3", "-o",
                 str(tmp_path / "other")]) == 0
    assert "6 picture(s) x 3 repeats = 18 steps" in capsys.readouterr().out


def test_bad_input_loses_nothing(dataset, tmp_path, state_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_csv = make_tagger(tmp_path / "no-csv")
    (no_csv / "selected_tags.csv").unlink()
    wrong = make_tagger(tmp_path / "wrong", width=len(TAGS) + 2)
    (wrong / "selected_tags.csv").write_text(
        "tag_id,name,category,count\n" + "".join(f"{i},t{i},0,1\n" for i in range(3)))
    model = make_tagger(tmp_path / "tagger")
    cases = [([str(empty), "--tagger", str(model)], "holds no pictures"),
             ([str(dataset), "--tagger", str(no_csv)], "has no selected_tags.csv"),
             ([str(dataset), "--tagger", str(wrong)], "lists 3 tags"),
             ([str(dataset), "--tagger", str(tmp_path / "nope")], "not found"),
             ([str(dataset), "--tagger", "someone/not-cached-tagger"], "hf download")]
    for args, words in cases:
        assert main(["caption", *args]) == 2, words
        err = capsys.readouterr().err
        assert words in err and "hint:" in err and "Traceback" not in err
    assert captions(dataset) == {}
    broken = dataset / "10_cube" / "broken.png"
    broken.write_bytes(b"not a picture")
    assert main(["caption", str(dataset), "--tagger", str(model)]) == 2
    assert "broken.png cannot be read as a picture" in capsys.readouterr().err
    assert captions(dataset) == {}  # nothing half-written
    broken.unlink()
    locked = dataset / "10_cube" / "red.txt"
    locked.write_text("mine\n")
    os.chmod(locked, 0o444)
    try:  # refused even for root: the read-only mark is the user's word
        assert main(["caption", str(dataset), "--tagger", str(model), "--overwrite"]) == 2
        assert "read-only" in capsys.readouterr().err
        assert locked.read_text() == "mine\n" and len(captions(dataset)) == 1
    finally:
        os.chmod(locked, 0o644)
