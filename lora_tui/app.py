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

from textual import events
from textual.app import App
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen

from lora_tui.dialogs.confirm import ConfirmDialog
from lora_tui.dialogs.import_report import ImportReportDialog
from lora_tui.draft import Draft
from lora_tui.runner import ProcessRunner, Runner, background_runs
from lora_tui.screens.queue import QueueScreen
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.start import StartScreen
from lora_tui.screens.step import StepScreen
from lora_tui.screens.training import BACKGROUND_NOTICE, TrainingScreen
from lora_tui.steps import STEPS
from lora_tui.widgets.ordered_keys import (
    hold_key,
    holds_keys,
    run_binding_as_read,
    settle_keys,
)

RunnerFactory = Callable[[], Runner]
# The short path of a new profile: base model, training images (their <repeats>_<name>
# folders carry the trigger), output; then the review, every other step one key away.
SHORT_PATH_STEPS = 3
LEAVE_QUESTION = ("Go back to the start menu? This profile's answers are not saved and "
                  "would be lost (n, then Ctrl+S saves them).")


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
        self.steps_in_path = len(STEPS)  # the steps Next walks before the review
        self._told_background = False  # the background notice was shown

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A pop-up message, always as plain text: messages name fields as the inline
        errors do (`` `[network] network_dim` ``), which markup would take for a tag and
        drop, and they hold paths and typed values. (Widgets' ``notify`` passes
        ``markup=True`` by default, so it is ignored here: no message uses markup.)"""
        super().notify(message, title=title, severity=severity,
                       timeout=self.NOTIFICATION_TIMEOUT if timeout is None else timeout,
                       markup=False)

    def action_help_quit(self) -> None:  # Ctrl+C: Textual's hint, in plain text
        self.notify("Ctrl+Q quits (a run goes on in the background)",
                    title="Do you want to quit?")

    async def on_event(self, event: events.Event) -> None:
        # Keys typed while a screen being shown has not focused its first field yet (Ctrl+N
        # and the next answer in one burst) wait for that field (widgets/ordered_keys.py).
        if isinstance(event, events.Key) and not event.is_forwarded and holds_keys(self):
            hold_key(self, event)
            return
        # A menu's key (E on Files, N on the start menu) runs as it is read, so the keys
        # typed after it wait for the screen it opens instead of going to the menu.
        if isinstance(event, events.Key) and not event.is_forwarded \
                and await run_binding_as_read(self, event):
            return
        await super().on_event(event)

    def pop_screen(self) -> AwaitComplete:
        # A dialog's answer reaches the screen that opened it after the keys already typed
        # are read: they wait for it (widgets/ordered_keys.py, settle_keys).
        callbacks = self.screen._result_callbacks
        if callbacks and callbacks[-1].requester is not None:
            settle_keys(self, callbacks[-1].requester)
        return super().pop_screen()

    def on_mount(self) -> None:
        self.push_screen(StartScreen())
        if self._open_at_start:
            self.open_review()
            if self.draft.import_report:  # `lora-tui kohya.json`: what became of each option
                self.push_screen(ImportReportDialog(self.draft.import_report))

    # -- navigation (screens call these) -----------------------------------------------

    def new_profile(self, short: bool = False) -> None:
        """A new profile, its mixed_precision written for this machine (``Draft.new``).
        ``short``: the first three steps, then the review with the defaults for the rest."""
        self.draft = Draft.new()
        self.steps_in_path = SHORT_PATH_STEPS if short else len(STEPS)
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
            self.push_screen(ImportReportDialog(report))  # every option, item by item
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
        if index + 1 < min(self.steps_in_path, len(STEPS)):
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
        answers the wizard shows that are not saved are asked about first (issue 24)."""
        if any(isinstance(s, QueueScreen) and s.running for s in self.screen_stack):
            self.notify("the queue is running: stop it first (S on the queue screen)",
                        severity="warning")
            return
        if isinstance(self.screen, StartScreen) or (isinstance(self.screen, ConfirmDialog)
                                                    and self.screen.question == LEAVE_QUESTION):
            return
        if self._unsaved_answers_on_screen():
            self.push_screen(ConfirmDialog(LEAVE_QUESTION),
                             lambda leave: self._go_home() if leave else None)
            return
        self._go_home()

    def _unsaved_answers_on_screen(self) -> bool:
        """Whether the wizard (a step or the review, maybe under a dialog) is showing answers
        that Ctrl+G would drop: changed since opened or saved, a new profile's included."""
        shown = next((s for s in reversed(self.screen_stack)
                      if not isinstance(s, ModalScreen)), None)
        return isinstance(shown, (StepScreen, ReviewScreen)) and self.draft.dirty

    def _go_home(self) -> None:
        self.tell_background()
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

    def tell_background(self) -> None:
        """Say that training goes on in the background, once: it tells how the app works,
        and the start screen lists the runs anyway. Leaving a run's screen, or going home,
        covered part of the screen with it every time."""
        if not self._told_background and self.runs_in_background():
            self._told_background = True
            self.notify(BACKGROUND_NOTICE, timeout=5)

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
