"""The captions dialog on the images step (Ctrl+T, issue 16), with Pilot at 80x24 and the
tiny tagger of tests/core/test_captioning.py: the tag table, a preview that writes nothing,
tagging every picture without a caption (a child process), the trigger first, undo."""

from __future__ import annotations

import pytest
from rich.text import Text
from textual.widgets import DataTable, Input, Static

from lora_tui.app import make_app
from lora_tui.dialogs.captions import CaptionsDialog
from lora_tui.runner import FakeRunner
from lora_tui.steps import STEPS
from tests.tui.helpers import SIZE, type_into, wait_for

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tests.core.test_captioning import make_tagger, picture  # noqa: E402


def shown(app, selector: str) -> str:
    return Text.from_markup(str(app.screen.query_one(selector, Static).content)).plain


async def test_tag_preview_trigger_first_and_undo(tmp_path, state_dir):
    data = tmp_path / "data"
    picture(data / "10_ohwx cube" / "red.png", (255, 0, 0))
    picture(data / "10_ohwx cube" / "blue.png", (0, 0, 255))
    (data / "10_ohwx cube" / "white.png").parent.mkdir(exist_ok=True)
    picture(data / "10_ohwx cube" / "white.png", (255, 255, 255))
    (data / "10_ohwx cube" / "white.txt").write_text("white \\(theme\\), cube")
    model = make_tagger(tmp_path / "tagger")
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        app.draft.set_text("model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        images_step = next(i for i, s in enumerate(STEPS) if s.dataset_check)
        app.open_step(images_step)
        await pilot.pause()
        await type_into(pilot, "dataset", "train_data_dir", str(data))
        screen = app.screen
        await wait_for(pilot, lambda: screen.check_action("captions", ()), timeout_s=10)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CaptionsDialog))
        dialog = app.screen
        assert "2 picture(s) without a caption" in shown(app, "#captions-summary")
        table = dialog.query_one("#captions-table", DataTable)
        assert [table.get_row_at(i)[1] for i in range(table.row_count)] == [
            "cube", "white \\(theme\\)"]
        assert dialog.query_one("#captions-trigger", Input).value == "ohwx cube"
        dialog.query_one("#captions-model", Input).value = str(model)
        dialog.query_one("#captions-model", Input).focus()
        await pilot.press("enter")  # the preview: nothing written
        await wait_for(pilot, lambda: "Preview" in shown(app, "#captions-output"), 60)
        assert "ohwx cube, red background" in shown(app, "#captions-output")
        assert not (data / "10_ohwx cube" / "red.txt").exists()
        await pilot.press("ctrl+t")
        red = data / "10_ohwx cube" / "red.txt"
        await wait_for(pilot, lambda: red.exists() and dialog.process is None, 60)
        assert red.read_text().strip() == "ohwx cube, red background, ^_^, always there"
        # read from the command's CaptionsTagged event, not its text: file names, not
        # full paths that would not fit 80 columns
        await wait_for(pilot, lambda: "wrote 2 caption file(s); Ctrl+Z undoes" in shown(
            app, "#captions-output"))
        said = shown(app, "#captions-output")
        assert "red.txt: ohwx cube, red background" in said and str(data) not in said
        assert (data / "10_ohwx cube" / "white.txt").read_text() == "white \\(theme\\), cube"
        assert "0 picture(s) without a caption" in shown(app, "#captions-summary")
        await pilot.press("ctrl+f")  # the trigger first in every caption
        assert (data / "10_ohwx cube" / "white.txt").read_text().strip() == \
            "ohwx cube, white \\(theme\\), cube"
        await pilot.press("ctrl+z")
        assert (data / "10_ohwx cube" / "white.txt").read_text().strip() == \
            "white \\(theme\\), cube"
        await pilot.press("ctrl+z")  # the tagging
        assert not red.exists()
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
