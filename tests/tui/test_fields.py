"""The field widgets (Pilot, 80x24; bursts are in the tmux tier, test_terminal.py): Tab
completion as a shell does it (the common part, the matches listed, ``builtin:`` names, a
folder-only field), a closed Select (Up/Down change it, Enter accepts and moves on, a line
says so), and every text input of the app taking its keys in order."""

from __future__ import annotations

import ast
from pathlib import Path

from rich.text import Text
from textual.widgets import Static

from lora_tui.widgets.field_editor import EnterSelect
from lora_tui.widgets.path_input import PathInput
from lora_tui.widgets.path_suggester import PathSuggester
from tests.tui.helpers import ROOT, SIZE, wait_for
from tests.tui.test_steps import index_of, new_app, open_step_with_basics

DATASET = ROOT / "examples" / "dataset"


def plain(widget: Static) -> str:
    return Text.from_markup(str(widget.content)).plain


def test_tab_completes_the_common_part_and_names_the_matches():
    suggester = PathSuggester(ROOT)
    found = suggester.completion("examples/dataset/")
    assert found.text == "examples/dataset/"  # reg/ or train/: not chosen for the user
    assert found.matches == ("reg/", "train/")
    assert suggester.complete("examples/dataset/") is None
    assert suggester.complete("examples/dataset/t") == "examples/dataset/train/"


def test_builtin_model_names_complete_in_the_model_field_only(tmp_path):
    model = PathSuggester(tmp_path, builtins=True)
    found = model.completion("builtin:")
    assert found.text == "builtin:tiny-" and found.matches == ("tiny-sd1", "tiny-sdxl",
                                                               "tiny-flux", "tiny-chroma")
    found = model.completion("builtin:tiny-s")
    assert found.text == "builtin:tiny-sd" and found.matches == ("tiny-sd1", "tiny-sdxl")
    assert model.complete("builtin:tiny-sdx") == "builtin:tiny-sdxl"
    assert model.complete("builtin:tiny-f") == "builtin:tiny-flux"
    assert model.complete("bu") == "builtin:"  # no such folder here: the prefix
    (tmp_path / "bundle").mkdir()
    assert model.complete("bu") == "bundle/"  # a folder that is there comes first
    assert PathSuggester(tmp_path).complete("builtin:") is None  # not a model field


def test_a_folder_field_completes_folders_not_the_files_in_them(tmp_path):
    tagger = tmp_path / "wd-tagger"
    tagger.mkdir()
    (tagger / "model.onnx").write_bytes(b"")
    (tagger / "selected_tags.csv").write_text("tag_id,name\n")
    folders = PathSuggester(tmp_path, folders_only=True)
    assert folders.complete("wd") == "wd-tagger/"
    assert folders.complete("wd-tagger/") is None  # never wd-tagger/model.onnx
    assert folders.complete("wd-tagger/m") is None
    assert PathSuggester(tmp_path).complete("wd-tagger/m") == "wd-tagger/model.onnx"


async def test_tab_in_a_path_field_shows_the_matches_then_moves_on(tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Training images", DATASET / "train",
                                             tmp_path / "out")
        field = screen.editor("dataset", "train_data_dir")
        widget = field.input_widget
        assert isinstance(widget, PathInput) and app.focused is widget
        widget.value = f"{DATASET}/"
        widget.cursor_position = len(widget.value)
        await pilot.press("tab")
        matches = field.query_one(".field-matches", Static)
        assert app.focused is widget and widget.value == f"{DATASET}/"
        await wait_for(pilot, lambda: matches.display and "reg/ · train/" in plain(matches))
        await pilot.press("tab")  # listed already, nothing to add: the next field
        assert app.focused is not widget
        await pilot.press("shift+tab", "end", "t", "tab")  # back (focus selects all)
        assert app.focused is widget and widget.value == f"{DATASET}/train/"
        await wait_for(pilot, lambda: not matches.display)  # the text changed: gone


async def test_tab_in_the_model_field_completes_builtin_names(tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        field = app.screen.editor("model", "pretrained_model_name_or_path")
        await pilot.press(*"builtin:", "tab")
        assert field.input_widget.value == "builtin:tiny-"
        matches = field.query_one(".field-matches", Static)
        await wait_for(pilot, lambda: "tiny-sd1 · tiny-sdxl · tiny-flux · tiny-chroma"
                       in plain(matches))
        await pilot.press("s", "tab")
        assert field.input_widget.value == "builtin:tiny-sd"
        await pilot.press("x", "tab")
        assert field.input_widget.value == "builtin:tiny-sdxl"


async def test_a_closed_select_changes_with_the_arrows_and_enter_moves_on(tmp_path):
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_step_with_basics(pilot, "Network", DATASET / "train",
                                             tmp_path / "out")
        assert screen.step.title == "Network" and index_of("Network") == screen.index
        field = screen.editor("network", "network_module")
        select = field.input_widget
        assert isinstance(select, EnterSelect) and app.focused is select
        keys = field.query_one(".select-keys", Static)
        assert keys.display and "Enter: keep it and go on" in plain(keys)
        await pilot.press("down")
        assert select.value == "LoCon" and not select.expanded  # changed in place
        await pilot.press("up", "enter")
        assert select.value == "LoRA"
        assert app.focused is screen.editor("network", "network_dim").input_widget
        assert not keys.display  # the line shows while the Select has the focus
        assert app.draft.text("network", "network_module") in ("", "LoRA")


def test_every_text_input_of_the_app_takes_its_keys_in_order():
    """A plain Input or TextArea reads keys typed after Enter, Tab or Ctrl+U as its own
    (issue 24: a burst in the Files edit dialog cleared the title): every one in lora_tui
    is an OrderedInput (or PathInput), or the field editor's PromptArea."""
    allowed = {"OrderedInput", "PathInput", "PromptArea"}
    found = []
    for path in sorted((ROOT / "lora_tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name.endswith(("Input", "TextArea", "Area")) and name not in allowed:
                    found.append(f"{Path(path).relative_to(ROOT)}:{node.lineno} {name}")
    assert found == []
