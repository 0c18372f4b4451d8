"""The real wizard trains the quickstart: Pilot drives the app, which runs the real
`lora-train` child process (ProcessRunner) on the built-in tiny model."""

from __future__ import annotations

import asyncio
import shutil

from rich.text import Text
from safetensors import safe_open
from textual.widgets import Static

from lora_core.profile_io import read_profile_dict
from lora_tui.app import make_app
from lora_tui.runner import ProcessRunner
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.training import TrainingScreen
from tests.e2e.conftest import ROOT

SIZE = (80, 24)


async def wait_for(pilot, predicate, timeout_s: float) -> None:
    end = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await pilot.pause(0.1)


def plain(screen, selector: str) -> str:
    return Text.from_markup(screen.query_one(selector, Static).content).plain


async def test_wizard_trains_the_quickstart(tmp_path, state_dir):
    # The example profile and its pictures, copied so the run writes only under tmp_path.
    shutil.copytree(ROOT / "examples" / "dataset", tmp_path / "dataset")
    text = (ROOT / "examples" / "quickstart.toml").read_text(encoding="utf-8")
    assert 'output_dir = "../output/quickstart"' in text
    profile = tmp_path / "quickstart.toml"
    profile.write_text(text.replace('output_dir = "../output/quickstart"',
                                    'output_dir = "out"'), encoding="utf-8")
    assert read_profile_dict(profile)["saving"]["output_dir"] == "out"

    app = make_app(profile, runner_factory=ProcessRunner)
    async with app.run_test(size=SIZE) as pilot:
        while not isinstance(app.screen, ReviewScreen):  # every step's answers as loaded
            await pilot.press("ctrl+n")
            await pilot.pause()
        review = app.screen
        await wait_for(pilot, lambda: review.check is not None, 30)
        assert "total steps: 80" in plain(review, "#review-plan")
        await pilot.press("t")
        assert isinstance(app.screen, TrainingScreen)
        screen = app.screen
        await wait_for(pilot, lambda: not screen.running, 300)
        assert screen.state == "finished", plain(screen, "#train-result")
        files_shown = plain(screen, "#train-files")
        result_shown = plain(screen, "#train-result")

    lora = tmp_path / "out" / "quickstart.safetensors"
    assert lora.is_file()
    # long folders are cut in the middle at 80 columns; the file's name is shown whole
    assert "final checkpoint" in files_shown and lora.name in files_shown.split(
        "final checkpoint")[1]
    assert f"{lora.name} in" in result_shown
    with safe_open(str(lora), "np") as fh:
        keys = list(fh.keys())
        assert any(k.endswith(".lora_down.weight") for k in keys)
    assert len(screen.losses) == 80

