"""The wizard app: holds the draft and the runner factory, and moves between screens.

Screens are a stack (Textual's model): each step is pushed on the one before, so Back is a
pop and the answers, kept in the draft, survive it. Build the app with :func:`make_app`, which
the console script and the tests both use. Never imports torch, diffusers or transformers.

Quitting never stops training: runs live in their own process (``lora_tui.runner``). When
one is still going, the app says so on the way out (``background_message``), so the user
knows where to find it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from lora_tui.draft import Draft
from lora_tui.runner import ProcessRunner, Runner, background_runs
from lora_tui.screens.queue import QueueScreen
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.start import StartScreen
from lora_tui.screens.step import StepScreen
from lora_tui.screens.training import BACKGROUND_NOTICE, TrainingScreen
from lora_tui.steps import STEPS

RunnerFactory = Callable[[], Runner]


class WizardApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "lora-tui"
    BINDINGS = [
        Binding("ctrl+g", "home", "Home", priority=True),
    ]

    def __init__(self, draft: Draft | None, runner_factory: RunnerFactory) -> None:
        super().__init__()
        self.draft = draft or Draft()
        self._open_at_start = draft is not None
        self.runner_factory = runner_factory

    def on_mount(self) -> None:
        self.push_screen(StartScreen())
        if self._open_at_start:
            self.open_review()

    # -- navigation (screens call these) -----------------------------------------------

    def new_profile(self) -> None:
        self.draft = Draft()
        self.open_step(0)

    def open_profile(self, path: Path, detach: bool = False) -> None:
        """Load a profile file into the wizard (raises LoraError for a bad file).

        ``detach``: the answers are taken from the file but the draft is not tied to it, so
        Save asks where to write. Used for a run folder's profile ("rerun with changes"):
        that file is the record of a past run and must not be overwritten."""
        if isinstance(path, str) or not is_profile_file(Path(path)):
            # Another tool's settings (or a pasted command): imported, saved under a new name.
            self.draft, report = (Draft.from_import("the pasted command", path)
                                  if isinstance(path, str) else Draft.from_import(Path(path)))
            self.open_review()
            self.notify(_import_notice(report), timeout=12)
            return
        self.draft = Draft.from_file(Path(path))
        if detach:
            self.draft.source_path = None
        self.open_review()

    def open_review(self) -> None:
        """The review: an opened profile lands here, one key (Enter) from training, each
        step one key (its number) from being changed."""
        self.clear_notifications()
        self.push_screen(ReviewScreen())

    def open_queue(self) -> None:
        self.push_screen(QueueScreen())

    def open_step(self, index: int, from_review: bool = False) -> None:
        self.clear_notifications()  # a "fix ... first" is about the step being left
        self.push_screen(StepScreen(index, from_review=from_review))

    def next_step(self, index: int) -> None:
        if index + 1 < len(STEPS):
            self.open_step(index + 1)
        else:
            self.open_review()

    def start_training(self, profile_path: Path, extra_args: Sequence[str] = (),
                       replace: bool = False) -> None:
        """Train ``profile_path`` (``extra_args``: ``--set`` overrides). ``replace``: in
        place of the current (training) screen, so Back skips the run that ended."""
        self._show_training(TrainingScreen(profile_path, self.runner_factory(), "run",
                                           extra_args), replace)

    def resume_run(self, run_dir: Path, replace: bool = False) -> None:
        """``lora-train resume RUN_DIR``: continue a run from its last saved state."""
        self._show_training(TrainingScreen(run_dir, self.runner_factory(), "resume"), replace)

    def attach_run(self, run_dir: Path) -> None:
        """Follow a run folder: its events so far, then live until it ends."""
        self._show_training(TrainingScreen(run_dir, self.runner_factory(), "attach"), False)

    def _show_training(self, screen: TrainingScreen, replace: bool) -> None:
        if replace and isinstance(self.screen, TrainingScreen):
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def action_home(self) -> None:
        """Back to the start menu from anywhere (Ctrl+G). Runs go on in the background;
        the answers stay in the draft (N starts a new one)."""
        if any(isinstance(s, QueueScreen) and s.running for s in self.screen_stack):
            self.notify("the queue is running: stop it first (S on the queue screen)",
                        severity="warning")
            return
        if isinstance(self.screen, StartScreen):
            return
        if self.runs_in_background():
            self.notify(BACKGROUND_NOTICE, timeout=8)
        while len(self.screen_stack) > 1 and not isinstance(self.screen, StartScreen):
            self.pop_screen()

    # -- quitting -----------------------------------------------------------------------

    def runs_in_background(self) -> list[str]:
        """Runs that go on after the app has gone: those it launched that still train, and
        those it follows (by run folder, or by profile before the folder is known)."""
        found = background_runs()
        for screen in self.screen_stack:
            if isinstance(screen, TrainingScreen) and screen.running:
                found.append(str(screen.run_dir or screen.profile_path))
        return list(dict.fromkeys(found))

    def background_message(self) -> str:
        runs = self.runs_in_background()
        if not runs:
            return ""
        lines = "\n".join(f"  {run}" for run in runs)
        return (f"training goes on in the background:\n{lines}\n"
                "`lora-tui` lists it on its start screen (A attaches); "
                "`lora-train status` and `lora-train stop RUN_FOLDER` work too.")

    def quit_app(self) -> None:
        """Exit, saying which runs go on (printed once the terminal is restored)."""
        self.exit(message=self.background_message() or None)

    async def action_quit(self) -> None:  # Ctrl+Q anywhere
        self.quit_app()


def is_profile_file(path: Path) -> bool:
    """Whether ``path`` is a lora-train profile (a TOML with profile_version), not another
    tool's settings for ``open_profile`` to import."""
    if path.suffix.lower() != ".toml" or not path.is_file():
        return path.suffix.lower() == ".toml"  # a missing .toml: the profile reader says so
    try:
        head = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return True
    return "profile_version" in head


def _import_notice(report: str) -> str:
    """The import's first line and its counts, for a notification."""
    lines = report.splitlines()
    counts = [line for line in lines if line.endswith(":") and "(" in line]
    return " ".join([lines[0], *counts]) + " Save (S) writes it as a profile."


def make_app(profile_path: Path | None = None,
             runner_factory: RunnerFactory | None = None) -> WizardApp:
    """The app, with ``profile_path`` loaded into the wizard when given (raises LoraError
    for a profile that cannot be read)."""
    draft = None
    if profile_path is not None:
        path = Path(profile_path)
        # Another tool's settings are imported: `lora-tui kohya.json` opens them on the review.
        draft = Draft.from_file(path) if is_profile_file(path) else Draft.from_import(path)[0]
    return WizardApp(draft, runner_factory or ProcessRunner)
