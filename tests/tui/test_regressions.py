"""Issue 12's smaller findings, each pinned by what the screen shows (Pilot, 80x24).

The real-terminal tier (test_terminal.py) covers typing and the flows; these are the
states it would take long to reach there: a run that fails before its first step, a stop,
the phase after a save, the wording of the plan and of a resume, the start screen's ages and
a failed run's detail, a notice left over from the step before.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.css.query import NoMatches
from textual.widgets import ProgressBar, RichLog, Static

from lora_core.events import (
    CheckpointSaved,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    StepEnded,
)
from lora_core.runs.status import RunStatus
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner
from lora_tui.widgets.run_list import run_detail
from tests.tui.helpers import SIZE, type_into, wait_for


def plain(app, selector: str) -> str:
    """The text of ``selector`` on the current screen ("" while it is not there yet)."""
    try:
        return Text.from_markup(app.screen.query_one(selector, Static).content).plain
    except NoMatches:
        return ""


def step(n: int, total: int = 10, epoch: int = 1) -> StepEnded:
    return StepEnded(step=n, total_steps=total, epoch=epoch, total_epochs=3, loss=0.5,
                     avg_loss=0.5, lrs={"lr/unet": 1e-4, "lr/textencoder": 5e-5},
                     it_per_s=2.0, eta_s=5.0)


async def test_a_run_that_fails_before_its_first_step_stops_the_bar(tmp_path):
    fake = FakeRunner([PhaseChanged("loading model"),
                       RunFailed("no such model", "check the path", "")])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        bar = screen.query_one(ProgressBar)
        assert bar.total is not None  # total None is the pulsing "working" bar


async def test_a_stopped_run_shows_no_eta_and_names_the_lr_groups_once(tmp_path):
    fake = FakeRunner([RunStarted("", "p.toml", "x", "", {"max_train_steps": 10}),
                       step(1), step(2), RunFinished(["/o/x-interrupted.safetensors"],
                                                     "/o/x-interrupted.safetensors", 2, 1.0,
                                                     interrupted=True)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "stopped")
        stats = plain(app, "#train-stats")
        assert "ETA" not in stats and "step 2/10" in stats
    running = FakeRunner([step(1)], delay_s=5)
    app = make_app(runner_factory=lambda: running)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        await wait_for(pilot, lambda: "step 1/10" in plain(app, "#train-stats"))
        stats = plain(app, "#train-stats")
        assert "lr unet 1.00e-04  textencoder 5.00e-05" in stats and "lr/" not in stats


async def test_the_phase_returns_to_training_and_counts_are_not_logged(tmp_path):
    fake = FakeRunner([PhaseChanged("caching latents", 0, 10),
                       *[PhaseChanged("caching latents", n, 10) for n in range(1, 11)],
                       PhaseChanged("training"), step(1),
                       PhaseChanged("saving x-step00000002.safetensors"),
                       CheckpointSaved("/o/x-step00000002.safetensors", "step", 2, 1),
                       PhaseChanged("training"), step(3)], delay_s=0.02, hold_s=60)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: "step 3/10" in plain(app, "#train-stats"))
        assert plain(app, "#train-phase") == "training"
        logged = [str(line.text) for line in screen.query_one(RichLog).lines]
        assert sum("caching latents" in line for line in logged) == 1  # one line, not 11


async def test_a_resume_names_the_epoch_it_continues_in(tmp_path):
    fake = FakeRunner([RunResumed("/r/states/x-step33-state", 33, 1), step(34, 60, 2)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.resume_run(tmp_path / "run")
        await wait_for(pilot, lambda: "step 34/60" in plain(app, "#train-stats"))
        logged = " ".join(str(line.text) for line in app.screen.query_one(RichLog).lines)
        assert "resumed from step 33 (in epoch 2)" in logged  # the header says epoch 2/3


async def test_the_review_says_how_reg_images_are_balanced(tmp_path):
    app = make_app(Path("examples/quickstart.toml"), runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "total steps" in plain(app, "#review-plan"), 10)
        plan = plain(app, "#review-plan")
        assert "reg/1_cube: 6 images x 1 repeat, balanced to 40 samples per epoch" in plan
        assert "10_ohwx cube: 4 images x 10 repeats = 40 samples" in plan
        command = plain(app, "#review-command")
        assert "Enter trains from" in command and "after saving" not in command


async def test_a_notice_about_a_step_is_gone_on_the_next(tmp_path, dataset):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.press("enter")  # empty required model: refused with a notice
        await pilot.pause()
        assert app._notifications
        await type_into(pilot, "model", "pretrained_model_name_or_path", "builtin:tiny-sd1")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: getattr(app.screen, "index", 0) == 1)
        assert not app._notifications


async def test_field_help_is_whole_on_focus_and_marked_when_folded(tmp_path):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await pilot.pause()
        model = app.screen.editor("model", "pretrained_model_name_or_path")
        doc = Text.from_markup(model.query_one(".field-doc", Static).content).plain
        assert doc == model.spec.doc  # focused: all of it
        await pilot.press("tab")
        await pilot.pause()
        folded = Text.from_markup(model.query_one(".field-doc", Static).content).plain
        assert folded.endswith("…") and len(folded.splitlines()) == 2


def _run(tmp_path: Path, status: str, message: str, log: str) -> RunStatus:
    folder = tmp_path / "runs" / "x"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text(log, encoding="utf-8")
    now = time.time()
    return RunStatus(run_dir=str(folder), output_name="x", status=status, pid=1, host="h",
                     started_at=now - 100, updated_at=now - 50, step=3, total_steps=10,
                     message=message)


def test_a_failed_runs_detail_fits_80x24_without_its_traceback(tmp_path):
    traceback = ("Traceback (most recent call last):\n" + "  File \"x.py\", line 1\n" * 40
                 + "ValueError: boom\n")
    failed = _run(tmp_path / "a", "failed", "the model file is damaged", "early\n" + traceback)
    lines = Text.from_markup(run_detail(failed)).plain.splitlines()
    assert "the model file is damaged" in lines[2] and "Traceback" not in " ".join(lines)
    assert len(lines) <= 6  # it fits under the list at 80x24
    crashed = _run(tmp_path / "b", "crashed", "", "step 3 done\n" + traceback + "Killed\n")
    lines = Text.from_markup(run_detail(crashed)).plain.splitlines()
    assert "Killed" in lines and not any("File \"x.py\"" in line for line in lines)
    assert len(lines) <= 8 and all(len(line) <= 80 for line in lines[3:-1])
