"""The wizard app: holds the draft and the runner factory, and moves between screens.

Screens are a stack (Textual's model): each step is pushed on the one before, so Back is a
pop and the answers, kept in the draft, survive it. Build the app with :func:`make_app`, which
the console script and the tests both use. Never imports torch, diffusers or transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import App

from lora_core.profile_io import load_profile
from lora_tui.draft import Draft
from lora_tui.runner import ProcessRunner, Runner
from lora_tui.screens.queue import QueueScreen
from lora_tui.screens.review import ReviewScreen
from lora_tui.screens.start import StartScreen
from lora_tui.screens.step import StepScreen
from lora_tui.screens.training import TrainingScreen
from lora_tui.steps import STEPS

RunnerFactory = Callable[[], Runner]


class WizardApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "lora-tui"

    def __init__(self, draft: Draft | None, runner_factory: RunnerFactory) -> None:
        super().__init__()
        self.draft = draft or Draft()
        self._open_at_start = draft is not None
        self.runner_factory = runner_factory

    def on_mount(self) -> None:
        self.push_screen(StartScreen())
        if self._open_at_start:
            self.open_step(0)

    # -- navigation (screens call these) -----------------------------------------------

    def new_profile(self) -> None:
        self.draft = Draft()
        self.open_step(0)

    def open_profile(self, path: Path, detach: bool = False) -> None:
        """Load a profile file into the wizard (raises LoraError for a bad file).

        ``detach``: the answers are taken from the file but the draft is not tied to it, so
        Save asks where to write. Used for a run folder's profile ("rerun with changes"):
        that file is the record of a past run and must not be overwritten."""
        self.draft = Draft.from_profile(load_profile(path), Path(path))
        if detach:
            self.draft.source_path = None
        self.open_step(0)

    def open_queue(self) -> None:
        self.push_screen(QueueScreen())

    def open_step(self, index: int, from_review: bool = False) -> None:
        self.push_screen(StepScreen(index, from_review=from_review))

    def next_step(self, index: int) -> None:
        if index + 1 < len(STEPS):
            self.open_step(index + 1)
        else:
            self.push_screen(ReviewScreen())

    def start_training(self, profile_path: Path) -> None:
        self.push_screen(TrainingScreen(profile_path, self.runner_factory()))


def make_app(profile_path: Path | None = None,
             runner_factory: RunnerFactory | None = None) -> WizardApp:
    """The app, with ``profile_path`` loaded into the wizard when given (raises LoraError
    for a profile that cannot be read)."""
    draft = None
    if profile_path is not None:
        draft = Draft.from_profile(load_profile(profile_path), Path(profile_path))
    return WizardApp(draft, runner_factory or ProcessRunner)
