"""`lora-train caption / resize --events FILE|-` (issue 26): the tool commands speak the
event protocol `run` speaks, so the wizard reads typed events instead of their text."""

from __future__ import annotations

import json

import pytest

from lora_core.cli import main
from lora_core.events import (
    CaptionsTagged,
    CommandFailed,
    ImagesTagged,
    LoraFactored,
    event_from_json,
    read_events,
)
from tests.core.test_lora_tools import write_lora


def test_resize_reports_the_file_it_wrote_as_an_event(tmp_path, capsys):
    lora = write_lora(tmp_path / "in.safetensors")
    out = tmp_path / "r2.safetensors"
    assert main(["resize", str(lora), "--rank", "2", "-o", str(out), "--events", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [event_from_json(line) for line in lines]  # every line is an event
    assert len(events) == 1 and isinstance(events[0], LoraFactored)
    done = events[0]
    assert done.command == "resize" and done.output == str(out) and out.is_file()
    assert done.ranks == {"2": done.modules} and done.modules > 0
    assert 0 < done.retained_lowest <= done.retained_mean <= 1


def test_a_refused_resize_says_why_in_an_event_too(tmp_path, capsys):
    lora = write_lora(tmp_path / "in.safetensors")
    events_file = tmp_path / "events.jsonl"
    argv = ["resize", str(lora), "--rank", "0", "-o", str(tmp_path / "o.safetensors"),
            "--events", str(events_file)]
    assert main(argv) == 2
    events = list(read_events(events_file))
    assert [type(e) for e in events] == [CommandFailed]
    assert "--rank must be" in events[0].message and events[0].hint
    assert "--rank must be" in capsys.readouterr().err  # the text is still there


def test_caption_reports_progress_and_the_captions_as_events(tmp_path, state_dir, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.core.test_captioning import make_tagger, picture

    folder = tmp_path / "data" / "10_cube"
    for name, rgb in (("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("white", (255,) * 3)):
        picture(folder / f"{name}.png", rgb)
    model = make_tagger(tmp_path / "tagger")
    argv = ["caption", str(folder), "--tagger", str(model), "--batch-size", "2",
            "--events", "-"]
    assert main([*argv, "--dry-run", "--limit", "2"]) == 0
    preview = [event_from_json(line) for line in capsys.readouterr().out.splitlines()]
    assert isinstance(preview[-1], CaptionsTagged) and preview[-1].dry_run
    assert len(preview[-1].paths) == 2 and not list(folder.glob("*.txt"))

    assert main(argv) == 0
    events = [event_from_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e.done, e.total) for e in events if isinstance(e, ImagesTagged)] == [(2, 3),
                                                                                  (3, 3)]
    tagged = events[-1]
    assert isinstance(tagged, CaptionsTagged) and not tagged.dry_run and not tagged.stopped
    written = {p: (folder / p).read_text().strip() for p in ("red.txt", "blue.txt")}
    by_name = dict(zip([p.rsplit("/", 1)[-1] for p in tagged.paths], tagged.captions,
                       strict=True))
    assert by_name["red.txt"] == written["red.txt"] == "red background, ^_^, always there"
    assert json.loads(events[-1].to_json())["type"] == "captions_tagged"
