"""The captions dialog with a sentence captioner (issue 30), Pilot at 80x24: the tiny random
Florence-2 of tests/helpers/tiny_captioners.py (it says "x" at every step). The folder is
recognised as a captioner, Enter previews three (nothing written), Ctrl+T captions every
picture without a caption in a child process with progress events, Ctrl+Z undoes."""

from __future__ import annotations

import pytest
from rich.text import Text
from textual.widgets import Input, ProgressBar, Static

from lora_tui.app import make_app
from lora_tui.dialogs.captions import CaptionsDialog
from lora_tui.runner import FakeRunner
from lora_tui.steps import STEPS
from tests.tui.helpers import SIZE, type_into, wait_for

pytest.importorskip("transformers")


def shown(app, selector: str) -> str:
    return Text.from_markup(str(app.screen.query_one(selector, Static).content)).plain


async def test_captioner_preview_caption_all_and_undo(tmp_path, state_dir):
    from tests.core.test_captioner import picture
    from tests.helpers.tiny_captioners import make_florence

    model = make_florence(tmp_path / "florence")
    folder = tmp_path / "data" / "10_ohwx cube"
    for i in range(4):
        picture(folder / f"{i}.png", (60 * i, 90, 160))
    (folder / "3.txt").write_text("cube, blue", encoding="utf-8")
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        app.draft.set_text("model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        app.open_step(next(i for i, s in enumerate(STEPS) if s.dataset_check))
        await pilot.pause()
        await type_into(pilot, "dataset", "train_data_dir", str(tmp_path / "data"))
        screen = app.screen
        await wait_for(pilot, lambda: screen.check_action("captions", ()), timeout_s=10)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CaptionsDialog))
        dialog = app.screen
        assert shown(app, "#captions-kind") == "tagger"
        assert not dialog.query_one("#captions-prompt-row").display  # a tagger has none
        await pilot.press("ctrl+o")  # the switch, with the focus in the model field
        assert shown(app, "#captions-kind") == "captioner"
        assert dialog.query_one("#captions-prompt-row").display
        await pilot.press("ctrl+o")
        assert shown(app, "#captions-kind") == "tagger"
        dialog.query_one("#captions-model", Input).value = str(model)
        dialog.query_one("#captions-model", Input).focus()
        await pilot.press("enter")  # recognised by its config.json; a preview of three
        await wait_for(pilot, lambda: "Preview" in shown(app, "#captions-output"), 120)
        assert shown(app, "#captions-kind") == "captioner"
        assert dialog.query_one("#captions-prompt-row").display
        said = shown(app, "#captions-output")
        assert said.count("ohwx cube, x") == 3 and "3.txt" not in said, said
        assert not (folder / "0.txt").exists()
        seen: list[float | None] = []
        bar = dialog.query_one("#captions-progress", ProgressBar)
        dialog.query_one("#captions-prompt", Input).value = "<CAPTION>"
        await pilot.press("ctrl+t")
        while dialog.process is None and not (folder / "0.txt").exists():
            await pilot.pause(0.05)
        while dialog.process is not None:
            seen.append(bar.total)
            await pilot.pause(0.05)
        assert 3 in seen  # the progress bar followed the images_tagged events
        await wait_for(pilot, lambda: "wrote 3 caption file(s)" in shown(
            app, "#captions-output"), 30)
        assert (folder / "0.txt").read_text(encoding="utf-8").startswith("ohwx cube, xx")
        assert (folder / "3.txt").read_text(encoding="utf-8") == "cube, blue"
        assert "0 picture(s) without a caption" in shown(app, "#captions-summary")
        await pilot.press("ctrl+z")
        assert not (folder / "0.txt").exists()
        assert (folder / "3.txt").read_text(encoding="utf-8") == "cube, blue"
