"""The training screen with a FakeRunner: failure with message, hint and log tail; Stop."""

from __future__ import annotations

import asyncio
import os
import sys

from rich.text import Text
from textual.widgets import Static

from lora_core.events import PhaseChanged, RunFailed, RunFinished, RunStarted, StepEnded
from lora_core.runs.requests import take_requests
from lora_core.runs.status import read_status
from lora_tui.app import make_app
from lora_tui.runner import FakeRunner, ProcessRunner, parse_line
from lora_tui.screens.training import TrainingScreen
from tests.tui.helpers import FAKE_ENGINE, ROOT, SIZE, wait_for


def plain(app, selector: str) -> str:
    return Text.from_markup(app.screen.query_one(selector, Static).content).plain


def step(n: int) -> StepEnded:
    return StepEnded(step=n, total_steps=10, epoch=1, total_epochs=1, loss=0.5, avg_loss=0.5,
                     lrs={"unet": 1e-4}, it_per_s=2.0, eta_s=5.0)


async def test_run_failed_shows_message_hint_and_log_tail(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("line one\nTraceback: the real cause\n", encoding="utf-8")
    fake = FakeRunner([PhaseChanged("loading model"), "some stderr line",
                       RunFailed("model file not found: /x.safetensors",
                                 "check [model] pretrained_model_name_or_path", str(log))])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "failed")
        result = plain(app, "#train-result")
        assert "model file not found: /x.safetensors" in result
        assert "check [model] pretrained_model_name_or_path" in result
        assert "Traceback: the real cause" in result
        assert "console" not in result


async def test_stop_asks_then_stops_the_runner(tmp_path):
    fake = FakeRunner([step(i) for i in range(1, 11)] + [RunFinished([], "", 10, 1.0)],
                      delay_s=0.3)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.losses) >= 1)
        await pilot.press("s")
        await pilot.press("n")  # not confirmed: keeps running
        assert not fake.stop_requested
        await pilot.press("s")
        await pilot.press("y")
        assert fake.stop_requested
        await wait_for(pilot, lambda: screen.state == "failed")  # exited without run_finished
        assert len(screen.losses) < 10
        assert "code 130" in plain(app, "#train-result")
        assert isinstance(app.screen, TrainingScreen)


async def test_save_now_and_sample_now_leave_requests_for_the_run(tmp_path):
    """V and P ask the run (in its run folder) to save / sample after its step; before the
    run has said where its folder is, and after it ended, the keys do nothing."""
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    fake = FakeRunner([RunStarted(str(run_dir), "p.toml", "x", str(run_dir / "log"),
                                  {"max_train_steps": 10}), step(1)], hold_s=30)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.losses) >= 1)
        await pilot.press("v")
        assert sorted(p.name for p in (run_dir / "requests").iterdir()) == ["save-now"]
        await pilot.press("p")
        assert take_requests(run_dir) == {"save-now", "sample-now"}
        screen.state = "finished"
        await pilot.press("v")
        assert take_requests(run_dir) == set()


def test_parse_line_tells_events_from_text():
    event = parse_line(step(3).to_json() + "\n")
    assert isinstance(event, StepEnded) and event.step == 3
    assert parse_line("{not json") == "{not json"
    assert parse_line("hello\n") == "hello"


async def test_process_runner_follows_a_detached_child_and_stops_it_with_sigint(
        tmp_path, state_dir, monkeypatch):
    """A stand-in engine (tests/tui/fake_engine.py): its events come through the launch
    file, its stderr through the output file; it runs in its own session with no pipe to
    us; SIGINT (via the run folder's run.json) makes it save and say run_finished."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setattr("lora_tui.runner.train_command", lambda profile, events, extra=(): [
        sys.executable, str(FAKE_ENGINE), str(events), str(run_dir)])
    runner = ProcessRunner(kill_after_s=5, poll_s=0.05)
    seen: list = []

    async def stop_when_started():
        while not any(isinstance(o, StepEnded) for o in seen):
            await asyncio.sleep(0.02)
        pid = runner.pid
        assert os.getsid(pid) == pid  # its own session: no SIGHUP from our terminal
        assert not os.readlink(f"/proc/{pid}/fd/1").startswith("pipe:")
        assert runner.run_dir == run_dir  # learnt from run_started: what stop() signals
        runner.stop()

    stopper = asyncio.ensure_future(stop_when_started())
    code = await asyncio.wait_for(runner.run(tmp_path / "p.toml", seen.append), 20)
    await stopper
    assert code == 130
    assert "fake engine: started" in seen
    assert any(isinstance(o, RunFinished) and o.interrupted for o in seen)
    assert read_status(run_dir).status == "stopped"
    assert runner.events_path.parent == state_dir / "launches"


async def test_sample_images_are_listed_and_drawn_in_the_terminal(tmp_path):
    from PIL import Image
    from rich_pixels import Pixels

    from lora_core.events import SampleSaved

    png = tmp_path / "run_000002_00_20260101000000.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(png)
    fake = FakeRunner([step(1), SampleSaved(str(png), 2, None, 0, "ohwx cube"),
                       RunFinished([], "", 2, 1.0)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=(120, 40)) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        assert ("sample 0 (step 2)", str(png)) in screen.files
        assert png.name in plain(app, "#train-files")  # its folder shortened to fit
        drawn = screen.query_one("#train-sample", Static).content
        assert isinstance(drawn, Pixels)  # the image itself, not a placeholder
        segments = list(app.console.render(drawn))
        assert any(s.style and s.style.bgcolor and s.style.bgcolor.triplet == (255, 0, 0)
                   for s in segments)


async def test_saved_files_show_their_validation_loss_and_the_lowest_is_marked(tmp_path):
    from lora_core.events import CheckpointSaved, ValidationMeasured

    def measured(step_: int, loss: float) -> ValidationMeasured:
        return ValidationMeasured(step=step_, epoch=step_ // 5, kind="epoch", loss=loss,
                                  divergence=0.01, images=3)

    fake = FakeRunner([step(5), measured(5, 0.31), CheckpointSaved("/o/x-000001.safetensors",
                                                                   5, 1, "epoch"),
                       step(10), measured(10, 0.27),
                       CheckpointSaved("/o/x.safetensors", 10, 2, "final"),
                       RunFinished(["/o/x-000001.safetensors", "/o/x.safetensors"],
                                   "/o/x.safetensors", 10, 1.0)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        files = " ".join(plain(app, "#train-files").split())  # as laid out at 80x24, joined
        assert "epoch checkpoint, val 0.3100: /o/x-000001.safetensors" in files
        assert "final checkpoint, val 0.2700 <- lowest: /o/x.safetensors" in files
        log = "\n".join(str(line.text) for line in screen.query_one("#train-log").lines)
        assert "validation loss 0.2700 at epoch 2 (3 held-out images" in " ".join(log.split())


async def test_best_file_grid_and_early_stop_are_shown(tmp_path):
    from PIL import Image
    from rich_pixels import Pixels

    from lora_core.events import BestFileSaved, GridSaved, StoppedEarly

    grid = tmp_path / "x_grid.png"
    Image.new("RGB", (288, 292), (0, 0, 255)).save(grid)
    best = "/o/x-best.safetensors"
    why = "stopped early at step 10: 2 validations in a row without a lower validation loss"
    fake = FakeRunner([step(5), BestFileSaved(best, "/o/x-000001.safetensors", 5, 1, 0.31),
                       GridSaved(str(grid), 2, 3), step(10),
                       BestFileSaved(best, "/o/x-000002.safetensors", 10, 2, 0.27),
                       StoppedEarly(10, 2, 2, 5, 0.27, why),
                       RunFinished(["/o/x.safetensors"], "/o/x.safetensors", 10, 1.0,
                                   best_file=best, best_loss=0.27, stop_reason=why)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=(120, 40)) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        files = " ".join(plain(app, "#train-files").split())
        assert files.count("x-best.safetensors") == 1  # replaced, not listed twice
        assert "best (val 0.2700, a copy of x-000002.safetensors)" in files
        assert "sample grid (2 prompts x 3 points)" in files and grid.name in files
        drawn = screen.query_one("#train-sample", Static).content
        assert isinstance(drawn, Pixels)  # the grid drawn with the sample rendering
        result = " ".join(plain(app, "#train-result").split())
        assert "Best by validation loss (0.2700): x-best.safetensors" in result
        assert why in result
