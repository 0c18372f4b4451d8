"""`lora-train tags` edits and their undo (issue 25 item 10): undo puts back the exact bytes
of every file an edit wrote, and a caption file of several lines (alternative captions, read
one per step with enable_wildcard) gets the edit on every line."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from lora_core.captioning.tags import TagEdit, edit_tags, tag_table
from lora_core.cli import main


def _folder(tmp_path: Path, captions: dict[str, bytes]) -> Path:
    folder = tmp_path / "5_hero"
    folder.mkdir()
    for name, data in captions.items():
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_bytes(data)
    return folder


def test_replace_with_nothing_drops_the_tag_and_is_undone(tmp_path, state_dir, capsys):
    folder = _folder(tmp_path, {"a": b"1girl, hair\n", "b": b"hair, smile\n"})
    assert main(["tags", str(folder), "--replace", "hair="]) == 0
    assert (folder / "a.txt").read_bytes() == b"1girl\n"  # no dangling ", "
    assert (folder / "b.txt").read_bytes() == b"smile\n"
    capsys.readouterr()
    assert main(["tags", str(folder), "--undo"]) == 0
    out = capsys.readouterr().out
    assert "left alone" not in out and "2 caption file(s) put back" in out
    assert (folder / "a.txt").read_bytes() == b"1girl, hair\n"
    assert (folder / "b.txt").read_bytes() == b"hair, smile\n"


def test_undo_keeps_crlf_bom_and_spacing_byte_for_byte(tmp_path, state_dir, capsys):
    originals = {"crlf": b"1girl, smile\r\n", "bom": b"\xef\xbb\xbf1girl,smile",
                 "spaced": b"  1girl ,  smile  \n\n", "padded": b" smile ,1girl \n"}
    folder = _folder(tmp_path, originals)
    edit_tags(folder, TagEdit(add=["hero"]))
    # the edit keeps each file's form too: CRLF stays CRLF, the byte-order mark stays
    assert (folder / "crlf.txt").read_bytes() == b"1girl, smile, hero\r\n"
    assert (folder / "bom.txt").read_bytes() == b"\xef\xbb\xbf1girl, smile, hero\n"
    (folder / "spaced.txt").write_bytes(b"1girl, smile, hero, mine\n")  # by hand since
    assert main(["tags", str(folder), "--undo"]) == 0
    assert "left alone (changed since)" in capsys.readouterr().out
    assert (folder / "spaced.txt").read_bytes() == b"1girl, smile, hero, mine\n"
    for name in ("crlf", "bom", "padded"):
        assert (folder / f"{name}.txt").read_bytes() == originals[name], name


def test_every_line_of_a_wildcard_caption_is_edited(tmp_path, state_dir):
    folder = _folder(tmp_path, {"w": b"1girl, smile\nwoman, hair\n\nperson\n"})
    edit_tags(folder, TagEdit(add=["hero"], first=True, replace={"hair": "red hair"}))
    assert (folder / "w.txt").read_bytes() == \
        b"hero, 1girl, smile\nhero, woman, red hair\n\nhero, person\n"
    # the table counts tags per caption file, never a tag spanning two lines
    assert dict(tag_table(folder)) == {"hero": 1, "1girl": 1, "smile": 1, "woman": 1,
                                       "red hair": 1, "person": 1}
    assert main(["tags", str(folder), "--undo"]) == 0
    assert (folder / "w.txt").read_bytes() == b"1girl, smile\nwoman, hair\n\nperson\n"
