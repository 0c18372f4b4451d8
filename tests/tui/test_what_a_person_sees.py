"""What a person reads at 80x24, driven with Pilot (issue 24's rough edges): pop-ups name a
field as the inline error does, the background notice is short and said once, the Files
list opens with its first row selected, long paths keep their file names whole in the log
and Files panes (and the log lays its lines out again after a resize), a sample preview
leaves the Files list in sight, the queue's failed row shows the problem itself and its
footer fits, and after S the log says what the wizard's keys do (never "Ctrl+C")."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Footer, OptionList, RichLog, Static
from textual.widgets._toast import Toast

from lora_core.checks.problem import error, raise_for_errors
from lora_core.errors import LoraError
from lora_core.events import CheckpointSaved, RunFinished, RunStarted, SampleSaved, StepEnded
from lora_tui.app import make_app
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.runner import FakeRunner
from lora_tui.screens.files import FilesScreen
from lora_tui.screens.queue import QueueEntry, QueueScreen, save_queue
from lora_tui.screens.step import StepScreen
from lora_tui.screens.training import TrainingScreen
from tests.tui.helpers import SIZE, type_into, wait_for

# A folder as long as a real one under a home directory; the names must stay whole.
OUT = "/home/someone/projects/loras/a-rather-long-folder-name/of-the-outputs"
CHECKPOINT = f"{OUT}/mylora-000001.safetensors"
FINAL = f"{OUT}/mylora.safetensors"
RUN_DIR = f"{OUT}/runs/mylora-20260101-120000"


def step(n: int, total: int = 10) -> StepEnded:
    return StepEnded(step=n, total_steps=total, epoch=1, total_epochs=1, loss=0.1,
                     avg_loss=0.1, lrs={"unet": 1e-4}, it_per_s=2.0, eta_s=1.0)


def toasts(app) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query(Toast)]


def lines_of(app, selector: str) -> list[str]:
    return Text.from_markup(str(app.screen.query_one(selector, Static).content)).plain \
        .splitlines()


def log_lines(app) -> list[str]:
    return [line.text for line in app.screen.query_one("#train-log", RichLog).lines]


async def test_a_pop_up_names_the_field_as_the_inline_error_does():
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("n")
        assert isinstance(app.screen, StepScreen)
        await type_into(pilot, "model", "pretrained_model_name_or_path", "")
        await pilot.press("enter")  # a required field left empty: Enter stays, and says why
        await wait_for(pilot, lambda: toasts(app))
        (shown,) = toasts(app)
        assert "`[model] pretrained_model_name_or_path` is required" in shown  # markup ate it


async def test_the_background_notice_is_short_and_said_once(tmp_path):
    app = make_app(runner_factory=lambda: FakeRunner(
        [RunStarted(RUN_DIR, "p.toml", "mylora", "log", {"max_train_steps": 10}), step(1)],
        hold_s=30))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        for _ in range(2):  # follow the run, leave it; follow it again, leave it again
            app.start_training(tmp_path / "p.toml")
            screen = app.screen
            await wait_for(pilot, lambda s=screen: s.state == "running")
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, TrainingScreen))
            await pilot.pause(0.1)
        said = [t for t in app.screen.query(Toast) if "background" in str(t.render())]
        assert len(said) == 1  # not on every screen change
        assert said[0].region.height <= 4  # it once took 8 of the 24 lines


async def test_the_files_list_opens_with_its_first_row_selected(state_dir):
    # its own state folder: no runs of other tests, so the one row is "pick another file"
    app = make_app(runner_factory=lambda: FakeRunner([]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
        assert app.screen.query_one("#files-list", OptionList).highlighted == 0
        await pilot.press("enter")  # the only row: pick another file
        await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))


async def test_long_paths_keep_their_file_names_whole_and_the_log_reflows(tmp_path):
    from PIL import Image

    sample = tmp_path / "mylora_000002_00_20260101120000_1.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(sample)
    fake = FakeRunner([RunStarted(RUN_DIR, "p.toml", "mylora", "log", {"max_train_steps": 4}),
                       step(1, 4), step(2, 4), SampleSaved(str(sample), 2, None, 0, "a cube"),
                       CheckpointSaved(CHECKPOINT, 2, 1, "epoch"), step(4, 4),
                       CheckpointSaved(FINAL, 4, 2, "final"),
                       RunFinished([CHECKPOINT, FINAL], FINAL, 4, 1.0)])
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished")
        await pilot.pause(0.2)
        names = ["mylora-000001.safetensors", "mylora.safetensors"]
        for name in names:
            assert any(name in line for line in log_lines(app)), log_lines(app)
            assert any(name in line for line in lines_of(app, "#train-files"))
        assert any("…" in line for line in log_lines(app))  # the folder shortened
        # A sample preview leaves the Files list in sight: at least its title and the two
        # checkpoints' lines lie inside the side pane.
        side = screen.query_one("#train-side").content_region
        files = screen.query_one("#train-files").region
        assert files.y + 5 <= side.bottom, (files, side)

        narrow = log_lines(app)
        await pilot.resize_terminal(160, 40)
        await wait_for(pilot, lambda: log_lines(app) != narrow)
        # Laid out again at the new width: more of the folder, on the checkpoint's line.
        wide = "a-rather-long-folder-name/of-the-outputs/mylora-000001.safetensors"
        assert any(line.startswith("epoch checkpoint: /home/") and wide in line
                   for line in log_lines(app)), log_lines(app)


async def test_the_queue_shows_a_failed_rows_problem_and_every_key_fits(state_dir):
    try:
        raise_for_errors([error("train_data_dir does not exist: /data/nothere",
                                "set it to the folder of <repeats>_<name> folders",
                                section="dataset", key="train_data_dir")],
                         "the profile has", "fix the fields named above")
    except LoraError as exc:
        message = exc.message
    failed = QueueEntry(Path("/p/bad.toml"), state="failed", message=message)
    save_queue([failed, QueueEntry(Path("/p/good.toml"))])
    app = make_app(runner_factory=lambda: FakeRunner([step(1)], hold_s=30))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        screen = app.screen
        row = screen.table.get_row_at(0)
        assert str(row[3]).startswith("train_data_dir does not exist: /data/")
        footer = screen.query_one(Footer)

        def shown_keys():
            return [k for k in footer.query("FooterKey") if k.display]

        for running in (False, True):
            if running:
                await pilot.press("r")
                # (the footer is laid out again a moment after the bindings change)
                await wait_for(pilot, lambda: screen.running and "Stop" in {
                    k.description for k in shown_keys()})
                await pilot.pause(0.2)
            keys = shown_keys()
            shown = {k.description for k in keys}
            assert {"Add", "Remove", "Up", "Down", "Clear", "Back", "Home"} <= shown
            assert ("Stop" if running else "Run") in shown
            # Every key is drawn whole inside 80 columns, left of the command palette.
            palette = max(k.region.x for k in footer.query("FooterKey"))
            assert all(k.region.right <= palette for k in keys
                       if k.region.x < palette), [(k.description, k.region) for k in keys]
        screen._confirmed_stop(True)


async def test_after_stop_the_log_says_what_the_wizards_keys_do(tmp_path):
    fake = FakeRunner([RunStarted(RUN_DIR, "p.toml", "mylora", "log",
                                  {"max_train_steps": 10}), step(1)], hold_s=30)
    app = make_app(runner_factory=lambda: fake)
    async with app.run_test(size=SIZE) as pilot:
        app.start_training(tmp_path / "p.toml")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "running")
        await pilot.press("s")
        await pilot.press("y")
        await wait_for(pilot, lambda: fake.stop_requested)
        await pilot.pause(0.1)
        said = " ".join(" ".join(log_lines(app)).split())
        assert "stop asked: the run ends after this step and saves what was trained" in said
        assert "Escape leaves it to end in the background" in said
        assert "Ctrl+C" not in said
