"""The wizard's Open imports other tools' settings (issue 14): a kohya_ss JSON opened as a
file, a command pasted into the Open prompt; both land on the review, tied to no file, so
Save asks where to write the profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.widgets import Input, Static

from lora_tui.app import make_app
from lora_tui.dialogs.import_report import ImportReportDialog
from lora_tui.runner import FakeRunner
from lora_tui.screens.review import ReviewScreen
from tests.helpers.commands import ISSUE_24_COMMAND
from tests.tui.helpers import EXAMPLE_TRAIN, SIZE, wait_for


async def test_open_imports_a_kohya_ss_json(tmp_path):
    source = tmp_path / "kohya.json"
    source.write_text(json.dumps({
        "LoRA_type": "Kohya LoCon", "pretrained_model_name_or_path": "builtin:tiny-sd1",
        "train_data_dir": str(EXAMPLE_TRAIN), "output_dir": str(tmp_path / "out"),
        "max_resolution": "64,64", "epoch": 3, "network_dim": 8, "network_alpha": 4,
        "conv_dim": 4, "conv_alpha": 2, "mixed_precision": "no", "xformers": True}))
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.query("#start-menu"))
        app.open_profile(source)
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))
        await pilot.press("escape")  # what became of each option, over the review
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen)
                       and app.screen.check is not None)  # mounted, and its plan made
        draft = app.draft
        assert draft.source_path is None and draft.dirty  # Save asks where
        assert draft.text("network", "network_module") == "LoCon"
        assert draft.text("training", "max_train_epochs") == "3"
        assert draft.text("dataset", "resolution") == "64"  # square, as the profile writes it
        assert source.read_text().startswith("{")  # the source is never written


async def test_a_command_pasted_into_open_is_imported(tmp_path):
    command = ("accelerate launch --num_cpu_threads_per_process 1 train_network.py "
               "--pretrained_model_name_or_path=builtin:tiny-sd1 --network_module=networks.lora "
               f"--train_data_dir={EXAMPLE_TRAIN} --output_dir={tmp_path / 'out'} "
               "--network_dim=16 --max_train_epochs=5 --xformers")
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o")
        await wait_for(pilot, lambda: bool(app.screen.query(Input)))
        app.screen.query_one(Input).value = command
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        assert app.draft.text("network", "network_dim") == "16"
        assert app.draft.text("training", "max_train_epochs") == "5"
        # what the command left out runs with sd-scripts' defaults
        assert app.draft.text("optimizer", "optimizer_type") == "AdamW"




def _flat(text: str) -> str:
    return "".join(text.split())


async def test_an_import_lists_every_option_of_every_group(tmp_path):
    """Issue 24: the wizard showed "Mapped (27): No effect here (2): Unknown (left out)
    (2):" with no items. Every line `lora-train import` prints is in the dialog over the
    review (scrollable: End reaches the last), and I on the review shows it again."""
    from rich.console import Console
    from textual.containers import VerticalScroll

    from lora_core.importing import import_source

    printed = import_source("the pasted command", ISSUE_24_COMMAND).render()
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("o")
        await wait_for(pilot, lambda: bool(app.screen.query(Input)))
        app.screen.query_one(Input).value = ISSUE_24_COMMAND
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))
        dialog = app.screen
        console = Console(width=74, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(dialog.query_one("#import-report-text", Static).content)
        shown = _flat(console.export_text())
        items = [line for line in printed.splitlines() if line.startswith("  ")]
        assert len(items) >= 30  # 27 mapped and more: the items, not only the counts
        for line in printed.splitlines():
            text = line.strip().removeprefix("- ")
            assert _flat(text) in shown, text
        assert "net_dim" in shown  # the option the profile does not have is listed
        body = dialog.query_one("#import-report-body", VerticalScroll)
        assert body.max_scroll_y > 0  # longer than 80x24: it scrolls
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))


async def test_lora_tui_given_another_tools_file_shows_its_report(tmp_path):
    """`lora-tui kohya.json`: the review, with the import's report over it."""
    source = tmp_path / "kohya.json"
    source.write_text(json.dumps({
        "pretrained_model_name_or_path": "builtin:tiny-sd1", "network_dim": 8,
        "train_data_dir": str(EXAMPLE_TRAIN), "output_dir": str(tmp_path / "out"),
        "mixed_precision": "no", "some_unknown_option": 3}))
    app = make_app(source, runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ImportReportDialog))
        assert app.screen.report == app.draft.import_report
        assert "some_unknown_option" in app.draft.import_report
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen))


def test_a_lets_file_with_subsets_keeps_them_as_subsets_in_the_wizard(tmp_path):
    """LETS [[subsets]] opened in the wizard: the draft points at a dataset_config that
    exists and lists only those subsets (not their parent folder with its siblings)."""
    import tomllib

    from lora_tui.draft import Draft
    from tests.core.test_import_real_files import LETS

    root = tmp_path / "data"
    for name in ("10_hero", "2_hero_closeups", "5_not_listed"):
        (root / name).mkdir(parents=True)
    source = tmp_path / "lets.toml"
    source.write_text(LETS.format(root=root.as_posix()))
    draft, report = Draft.from_import(source)
    config_path = Path(draft.text("dataset", "dataset_config"))
    assert config_path.is_file() and str(config_path) in report
    assert draft.text("dataset", "train_data_dir") == ""
    subsets = tomllib.loads(config_path.read_text())["datasets"][0]["subsets"]
    assert sorted(Path(s["image_dir"]).name for s in subsets) == ["10_hero", "2_hero_closeups"]
    assert not draft.validate().field_errors.get(("dataset", "dataset_config"))
