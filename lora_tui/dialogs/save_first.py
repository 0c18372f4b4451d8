"""Asked when an opened profile that was changed in the wizard is trained: save the changes
to the user's file first, or train a copy and leave the file as it was (issue 24: the copy
in the state folder was trained without a word, and the file kept its old answers).

Dismisses with "save", "copy", or None (Escape: neither, back to the review).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class SaveFirstDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("s", "answer('save')", "Save, then train"),
                Binding("c", "answer('copy')", "Train a copy"),
                Binding("escape", "answer(None)", "Cancel")]

    def __init__(self, profile_path: Path, copy_path: Path) -> None:
        super().__init__(classes="dialog")
        self.profile_path = Path(profile_path)
        self.copy_path = Path(copy_path)

    def compose(self) -> ComposeResult:
        name = escape(self.profile_path.name)
        with Vertical(classes="dialog-box"):
            yield Static(f"The answers changed since {name} was opened, and it is not saved.\n"
                         f"S: save them to {escape(str(self.profile_path))}, then train it.\n"
                         f"C: train a copy ({escape(str(self.copy_path))}); {name} stays as "
                         "it was.", classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save, then train (s)", id="save", variant="primary")
                yield Button("Train a copy (c)", id="copy")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#save", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_answer(self, value: str | None) -> None:
        self.dismiss(value)
