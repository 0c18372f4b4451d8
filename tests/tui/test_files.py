"""The Files screen (F on the start screen), with Pilot at 80x24: a LoRA picked by path shows
its facts and its tags most used first; E edits the user fields (tensors untouched, the
original kept as a backup); Z resizes into a new file beside it (a child process); a file
that is not a LoRA says so and changes nothing."""

from __future__ import annotations

from rich.text import Text
from safetensors import safe_open
from textual.widgets import DataTable, Input, Static

from lora_core.lora_tools.inspect import inspect_lora, tensor_data_hash
from lora_tui.app import make_app
from lora_tui.screens.files import FilesScreen, resized_name
from tests.core.test_lora_tools import write_lora
from tests.tui.helpers import SIZE, wait_for


def shown(app, selector: str) -> str:
    return Text.from_markup(str(app.screen.query_one(selector, Static).content)).plain


async def open_file(pilot, path) -> None:
    await pilot.press("f")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, FilesScreen))
    await pilot.press("p")
    await wait_for(pilot, lambda: pilot.app.screen.query(Input))
    pilot.app.screen.query_one(Input).value = str(path)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, FilesScreen))


async def test_files_screen_shows_edits_and_resizes_a_lora(tmp_path):
    lora = write_lora(tmp_path / "mychar.safetensors")
    data = tensor_data_hash(lora)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_file(pilot, lora)
        screen = app.screen
        await wait_for(pilot, lambda: "SD 1.x" in shown(app, "#files-info"))
        info = shown(app, "#files-info")
        assert "Network: LoCon, dim 8, alpha 4" in info and "steps: 1200" in info
        table = screen.query_one("#files-tags", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert rows[0][:2] == ["24", "1girl"] and ["7", "smile", "10_mychar"] in rows

        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#edit-title"))
        app.screen.query_one("#edit-title", Input).value = "My Char"
        app.screen.query_one("#edit-keywords", Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "original is kept" in shown(app, "#files-message"))
        assert inspect_lora(lora)["user"]["title"] == "My Char"
        assert tensor_data_hash(lora) == data
        assert (tmp_path / "mychar.safetensors.backup").is_file()

        await pilot.press("z")
        await wait_for(pilot, lambda: app.screen.query("#rank"))
        app.screen.query_one("#rank", Input).value = "99"
        await pilot.press("enter")
        assert "from 1 up to 8" in shown(app, "#rank-error")  # a resize never adds rank
        app.screen.query_one("#rank", Input).value = "2"
        await pilot.press("enter")
        output = tmp_path / "mychar-r2.safetensors"
        await wait_for(pilot, lambda: output.is_file() and "dim 2" in shown(
            app, "#files-info"), timeout_s=90)
        with safe_open(str(output), "pt") as fh:
            assert fh.metadata()["ssmd_display_name"] == "My Char"  # the info carried over
        # read from the command's LoraFactored event, not its text
        assert "modules at rank 2 (" in shown(app, "#files-message")
        assert resized_name(lora, 2).name == "mychar-r2-2.safetensors"


async def test_a_file_that_is_not_a_lora_is_named_and_left_alone(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_bytes(b"not a safetensors file")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await open_file(pilot, bad)
        await wait_for(pilot, lambda: "notes.safetensors" in shown(app, "#files-message"))
        assert "broken .safetensors header" in shown(app, "#files-message")
        assert app.screen.check_action("edit", ()) is False  # nothing to edit
    assert bad.read_bytes() == b"not a safetensors file"


async def test_a_runs_best_file_and_sample_grid_are_listed_and_drawn(tmp_path, state_dir):
    from PIL import Image
    from rich_pixels import Pixels
    from textual.widgets import OptionList

    from lora_core.runs.status import new_status, register_run, write_status

    final = write_lora(tmp_path / "out" / "mychar.safetensors")
    best = write_lora(tmp_path / "out" / "mychar-best.safetensors")
    grid = tmp_path / "out" / "sample" / "mychar_grid.png"
    grid.parent.mkdir()
    Image.new("RGB", (288, 292), (0, 0, 255)).save(grid)
    run_dir = tmp_path / "out" / "runs" / "mychar-1"
    run_dir.mkdir(parents=True)
    status = new_status(run_dir, "mychar", run_dir / "profile.toml", None, total_steps=12,
                        total_epochs=4)
    status.status, status.final_file, status.best_file = "finished", str(final), str(best)
    status.best_validation_loss, status.grid_file = 0.1234, str(grid)
    write_status(status)
    register_run(run_dir)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
        menu = app.screen.query_one("#files-list", OptionList)
        ids = [menu.get_option_at_index(i).id for i in range(menu.option_count)]
        assert ids[:2] == [str(final), str(best)]  # the best file beside the final one
        await pilot.press("enter")
        await wait_for(pilot, lambda: "sample grid" in shown(app, "#files-run"))
        text = " ".join(shown(app, "#files-run").split())
        assert "best by validation loss (0.1234)" in text and "mychar-best.safetensors" in text
        assert "mychar_grid.png" in text
        assert isinstance(app.screen.query_one("#files-grid", Static).content, Pixels)
