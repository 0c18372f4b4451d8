"""Asks for a file path in the terminal (with completion); dismisses with the path, or None
when cancelled. Never a native dialog: it must work over SSH."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from lora_tui.widgets.path_input import PathInput


class PathPrompt(ModalScreen[Path | str | None]):
    """``commands``: a pasted training command (not a file) is returned as text."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "", base_dir: Path | None = None,
                 commands: bool = False) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.value = value
        self.base_dir = base_dir or Path.cwd()
        self.commands = commands

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(escape(self.question), classes="dialog-question")
            yield PathInput(self.value, self.base_dir, id="path")
            yield Static("", id="path-matches")  # what Tab found
            yield Static("[dim]Enter: OK · Tab or Right: complete · Escape: cancel[/dim]")

    def on_mount(self) -> None:
        path = self.query_one("#path", PathInput)
        path.submit = lambda: self.accept(path.value)  # as Enter is read: keys typed after
        # it go to the screen this dialog returns to (widgets/ordered_keys.py)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.accept(event.value)

    def show_matches(self, markup: str) -> None:
        """The matches Tab found (PathInput), until the text changes."""
        self.query_one("#path-matches", Static).update(markup)

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, PathInput) and not event.input.matches_current:
            self.show_matches("")

    def accept(self, value: str) -> None:
        text = value.strip()
        if not text:
            return
        if self.commands and ".py" in text and " --" in text:
            self.dismiss(text)  # a pasted command line, to import
            return
        path = Path(text).expanduser()
        self.dismiss(path if path.is_absolute() else self.base_dir / path)

    def action_cancel(self) -> None:
        self.dismiss(None)
