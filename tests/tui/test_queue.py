"""The queue screen and rerun-last, driven with Pilot and fake runners at 80x24."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import Static

from lora_core.events import RunFailed, RunFinished, RunStarted, StepEnded
from lora_core.profile_load import load_profile
from lora_core.runs.folders import create_run_folder, record_last_run
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner
from lora_tui.screens.queue import QUEUE_FILE, QueueScreen, load_queue
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.start import StartScreen
from lora_tui.screens.training import TrainingScreen
from tests.tui.helpers import ROOT, SIZE, wait_for

QUICKSTART = ROOT / "examples" / "quickstart.toml"


@pytest.fixture
def profiles(tmp_path, state_dir) -> Path:
    """A folder holding a.toml, b.toml and c.toml (copies of the quickstart)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    for name in "abc":
        shutil.copy(QUICKSTART, folder / f"{name}.toml")
    return folder


def steps(total: int) -> list[StepEnded]:
    return [StepEnded(step=i, total_steps=total, epoch=1, total_epochs=1, loss=0.5,
                      avg_loss=0.5, lrs={"unet": 1e-4}, it_per_s=2.0, eta_s=1.0)
            for i in range(1, total + 1)]


def succeeding(name: str) -> FakeRunner:
    files = [f"/out/{name}-000001.safetensors", f"/out/{name}.safetensors"]
    return FakeRunner([RunStarted("/out/runs/x", "p.toml", name, "/out/log", {
        "max_train_steps": 3}), *steps(3), RunFinished(files, files[-1], 3, 1.0)])


def failing() -> FakeRunner:
    return FakeRunner([*steps(1), "Traceback (most recent call last):",
                       RunFailed("model file not found: /models/x.safetensors",
                                 "check [model] pretrained_model_name_or_path", "/out/log")])


def detail(app) -> str:
    return Text.from_markup(app.screen.query_one("#queue-detail", Static).content).plain


async def open_queue_with(pilot, folder: Path) -> QueueScreen:
    await pilot.press("u")
    screen = pilot.app.screen
    assert isinstance(screen, QueueScreen)
    await pilot.press("a")
    pilot.app.screen.query_one("#path").value = str(folder)  # a folder adds every .toml
    await pilot.press("enter")
    await wait_for(pilot, lambda: pilot.app.screen is screen and len(screen.entries) == 3)
    return screen


async def test_queue_continues_after_a_failure_and_shows_each_result(profiles):
    runners = [succeeding("a"), failing(), succeeding("c")]
    made = iter(runners)
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_queue_with(pilot, profiles)
        await pilot.press("r")
        await wait_for(pilot, lambda: not screen.running
                       and all(e.state != "waiting" for e in screen.entries))
        assert [r.profile_path for r in runners] == [(profiles / f"{n}.toml").absolute()
                                                     for n in "abc"]
        first, second, third = screen.entries
        assert (first.state, first.files) == ("done", runners[0].outputs[-1].files)
        assert first.step == first.total_steps == 3
        assert second.state == "failed"
        assert second.message == "model file not found: /models/x.safetensors"
        assert second.hint == "check [model] pretrained_model_name_or_path"
        assert (third.state, third.final_file) == ("done", "/out/c.safetensors")
        table = screen.table
        assert list(table.get_row_at(0)) == ["1", "a.toml", "done", "a.safetensors (+1 files)"]
        assert table.get_row_at(1)[2] == "failed"
        assert "model file not found" in table.get_row_at(1)[3]
        assert table.get_row_at(2)[2:] == ["done", "c.safetensors (+1 files)"]
        await pilot.press("up")  # the failed row's detail: message and hint in full
        assert "model file not found: /models/x.safetensors" in detail(app)
        assert "hint: check [model] pretrained_model_name_or_path" in detail(app)
        await pilot.press("up")
        assert "/out/a-000001.safetensors" in detail(app)


async def test_a_child_that_dies_without_an_event_fails_with_its_exit_code(profiles):
    made = iter([FakeRunner(["Segmentation fault"], exit_code=139), succeeding("b"),
                 succeeding("c")])
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_queue_with(pilot, profiles)
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.entries[2].state == "done")
        first = screen.entries[0]
        assert first.state == "failed"
        assert "code 139" in first.message and first.hint == "Segmentation fault"


async def test_reorder_remove_and_persistence(profiles, state_dir):
    app = make_app(runner_factory=lambda: succeeding("x"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_queue_with(pilot, profiles)
        assert screen.table.cursor_row == 2  # the last one added
        await pilot.press("u")  # c moves above b
        assert [e.profile.name for e in screen.entries] == ["a.toml", "c.toml", "b.toml"]
        assert screen.table.cursor_row == 1
        assert [screen.table.get_row_at(i)[1] for i in range(3)] == ["a.toml", "c.toml",
                                                                    "b.toml"]
        await pilot.press("up", "shift+down")  # a moves below c
        assert [e.profile.name for e in screen.entries] == ["c.toml", "a.toml", "b.toml"]
        await pilot.press("x")  # removes a (the selected row)
        assert [e.profile.name for e in screen.entries] == ["c.toml", "b.toml"]
        # a path that names nothing and a broken profile are refused, with a message
        (profiles / "broken.toml").write_text("[network]\nnetwork_dimm = 8\n", "utf-8")
        assert screen.add_profiles(profiles / "missing.toml") == []
        assert screen.add_profiles(profiles / "broken.toml") == []
        assert len(screen.entries) == 2
        await pilot.press("r")
        await wait_for(pilot, lambda: [e.state for e in screen.entries] == ["done", "done"])

    saved = json.loads((state_dir / QUEUE_FILE).read_text(encoding="utf-8"))
    assert [Path(e["profile"]).name for e in saved["entries"]] == ["c.toml", "b.toml"]

    # A new app (a restart) shows the same queue with each row's last result.
    app = make_app(runner_factory=lambda: succeeding("y"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        screen = app.screen
        assert [e.profile.name for e in screen.entries] == ["c.toml", "b.toml"]
        assert [e.state for e in screen.entries] == ["done", "done"]
        assert screen.entries[0].final_file == "/out/x.safetensors"
        assert screen.table.get_row_at(1)[1:3] == ["b.toml", "done"]
        await pilot.press("c")  # clear the done rows
        assert screen.entries == []
    assert load_queue(state_dir / QUEUE_FILE) == []


async def test_stop_asks_then_stops_the_current_run_and_the_rest(profiles):
    slow = FakeRunner(steps(20), delay_s=0.2)
    later = [succeeding("b"), succeeding("c")]
    made = iter([slow, *later])
    app = make_app(runner_factory=lambda: next(made))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_queue_with(pilot, profiles)
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.entries[0].step >= 1)
        assert screen.table.get_row_at(0)[2].startswith("running ")
        await pilot.press("escape")  # cannot leave while running
        assert app.screen is screen
        await pilot.press("s", "n")  # not confirmed
        assert not slow.stop_requested
        await pilot.press("s", "y")
        await wait_for(pilot, lambda: not screen.running)
        assert slow.stop_requested
        assert [e.state for e in screen.entries] == ["stopped", "skipped", "skipped"]
        assert screen.entries[0].step < 20
        assert all(r.profile_path is None for r in later)  # never started


def test_a_running_row_saved_by_a_closed_app_loads_as_stopped(state_dir):
    path = state_dir / QUEUE_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "entries": [
        {"profile": "/p/a.toml", "state": "running", "step": 5, "total_steps": 80}]}), "utf-8")
    [entry] = load_queue(path)
    assert entry.state == "stopped" and "closed" in entry.message
    path.write_text("{not json", "utf-8")
    with pytest.raises(Exception, match="unreadable"):
        load_queue(path)


# -- rerun last, from the record lora-train itself writes --------------------------------

def record_a_run(tmp_path, source: Path = QUICKSTART) -> Path:
    """What `lora-train run` leaves behind: a run folder and last_run.json naming the profile
    the user started it from (``source``)."""
    profile = load_profile(source)
    folder = create_run_folder(tmp_path / "out", "quickstart", profile)
    record_last_run(folder, source)
    return folder.profile


async def test_rerun_last_trains_the_profile_the_user_chose_and_says_so(tmp_path, state_dir):
    record_a_run(tmp_path)
    fake = succeeding("quickstart")
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        assert isinstance(app.screen, TrainingScreen)
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        assert fake.profile_path == QUICKSTART
        assert any(f"rerunning {QUICKSTART}" in str(n.message) for n in app._notifications)


async def test_rerun_last_falls_back_to_the_run_folder_copy(tmp_path, state_dir):
    source = tmp_path / "mine.toml"
    source.write_bytes(QUICKSTART.read_bytes())
    (tmp_path / "dataset").symlink_to(QUICKSTART.parent / "dataset")
    recorded = record_a_run(tmp_path, source)
    source.unlink()  # the user's profile is gone
    fake = succeeding("quickstart")
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        assert fake.profile_path == recorded


async def test_rerun_with_changes_opens_the_chosen_profile_on_the_review(tmp_path, state_dir):
    record_a_run(tmp_path)
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        assert isinstance(app.screen, ReviewScreen)
        assert app.draft.source_path == QUICKSTART  # the user's own file: Save writes it
        assert app.draft.text("network", "network_dim") == "8"


async def test_rerun_with_changes_of_a_vanished_profile_opens_the_record_unattached(
        tmp_path, state_dir):
    source = tmp_path / "gone.toml"
    source.write_bytes(QUICKSTART.read_bytes())
    (tmp_path / "dataset").symlink_to(QUICKSTART.parent / "dataset")
    recorded = record_a_run(tmp_path, source)
    source.unlink()
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        assert isinstance(app.screen, ReviewScreen)
        assert app.draft.text("model", "pretrained_model_name_or_path") == "builtin:tiny-sd1"
        # The recorded profile has absolute paths (it runs from anywhere)...
        expected = (tmp_path / "dataset" / "train").resolve()
        assert Path(app.draft.profile().dataset.train_data_dir).resolve() == expected
        # ...and is the record of a past run: Save must ask where, not overwrite it.
        assert app.draft.source_path is None
        assert recorded.is_file()


async def test_rerun_without_a_recorded_run_says_so(state_dir):
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        assert isinstance(app.screen, StartScreen)
        message = Text.from_markup(app.screen.query_one("#start-message", Static).content)
        assert "no earlier run is recorded" in message.plain
