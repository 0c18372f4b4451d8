"""One profile field: its label and default, a one-line explanation, the input, and the
profile's message when the value is not allowed.

Which input is drawn follows the field's metadata: a Select for choices (and for a bool that
may be unset), a Switch for a bool, an Input otherwise (with path completion for paths).
Empty input means the default; the editor reports raw text and never judges it: the screen
asks the draft, which asks the profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch

from lora_tui.draft import FieldSpec
from lora_tui.widgets.path_suggester import PathSuggester

_TRISTATE = (("unset (detect)", ""), ("true", "true"), ("false", "false"))


class EnterSwitch(Switch):
    """A switch where Space toggles and Enter moves on, like every other field."""

    BINDINGS = [("space", "toggle_switch", "Toggle")]

    def key_enter(self) -> None:
        field = next(a for a in self.ancestors if isinstance(a, FieldEditor))
        field.post_message(FieldEditor.Submitted(field))


class FieldEditor(Vertical):
    """Edits the text of one field; posts :class:`FieldEditor.Changed`."""

    @dataclass
    class Changed(Message):
        editor: FieldEditor
        section: str
        key: str
        text: str

    @dataclass
    class Submitted(Message):
        """Enter was pressed in the field (accepting what it holds, or the default)."""

        editor: FieldEditor

    def __init__(self, spec: FieldSpec, text: str, base_dir: Path) -> None:
        super().__init__(classes="field-editor", id=f"field-{spec.section}-{spec.key}")
        self.spec = spec
        self._text = text
        self._base_dir = base_dir

    @property
    def text(self) -> str:
        return self._text

    def compose(self) -> ComposeResult:
        spec = self.spec
        yield Label(f"[b]{escape(spec.label)}[/b]  [dim]default: "
                    f"{escape(spec.default_text)}[/dim]", classes="field-label")
        yield Static(escape(spec.doc), classes="field-doc")
        yield self._make_input()
        yield Static("", classes="field-error")

    def _make_input(self):
        spec, text = self.spec, self._text
        if spec.kind == "choice":
            options = [(c, c) for c in spec.choices or ()]
            value = text if text in (spec.choices or ()) else spec.default
            return Select(options, value=value, allow_blank=False, classes="field-input")
        if spec.kind == "tristate":
            return Select(_TRISTATE, value=text.lower() if text else "", allow_blank=False,
                          classes="field-input")
        if spec.kind == "switch":
            current = text.lower() == "true" if text else bool(spec.default)
            return EnterSwitch(value=current, classes="field-input")
        return Input(value=text, placeholder=f"Enter: {spec.default_text}",
                     suggester=PathSuggester(self._base_dir) if spec.is_path else None,
                     classes="field-input")

    @property
    def input_widget(self):
        return self.query_one(".field-input")

    def set_text(self, text: str) -> None:
        """Show ``text`` (after the draft changed behind the editor, e.g. a one-key fix)."""
        self._text = text
        widget = self.input_widget
        with widget.prevent(Input.Changed, Select.Changed, Switch.Changed):
            if isinstance(widget, Input):
                widget.value = text
            elif isinstance(widget, Switch):
                widget.value = text.lower() == "true" if text else bool(self.spec.default)
            elif self.spec.kind == "tristate":
                widget.value = text.lower()
            else:
                widget.value = text or self.spec.default

    def set_errors(self, errors: list[str]) -> None:
        label = self.query_one(".field-error", Static)
        label.update(escape("\n".join(errors)))
        self.set_class(bool(errors), "has-error")

    def _changed(self, text: str) -> None:
        self._text = text
        self.post_message(self.Changed(self, self.spec.section, self.spec.key, text))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._changed(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted(self))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        value = event.value if isinstance(event.value, str) else ""
        self._changed(value)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._changed("true" if event.value else "false")
