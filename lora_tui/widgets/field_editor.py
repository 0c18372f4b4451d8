"""One profile field: its label and default, a one-line explanation, the input, and the
profile's message when the value is not allowed.

Which input is drawn follows the field's metadata: a Select for choices (and for a bool that
may be unset), a Switch for a bool, a TextArea for the wizard's multi-line questions, an
Input otherwise (with path completion for paths). Enter accepts what a field holds and moves
on in every kind of input (a Select opens with Space or the arrows). Empty input means the
default; the editor reports raw text and never judges it: the screen asks the draft, which
asks the profile. A note line under the doc carries what the screen learns live (the model
that was detected, the optimizer's recommended arguments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch, TextArea

from lora_tui.draft import FieldSpec
from lora_tui.widgets.path_suggester import PathSuggester


def escape(text: str) -> str:
    """``text`` shown as is in Textual markup: every ``[`` is escaped (rich's escape leaves
    ``["a=1"]`` alone, which Textual's parser then reads as a tag)."""
    return text.replace("[", "\\[")


_TRISTATE = (("unset (detect)", ""), ("true", "true"), ("false", "false"))


def _submit_from(widget) -> None:
    field = next(a for a in widget.ancestors if isinstance(a, FieldEditor))
    field.post_message(FieldEditor.Submitted(field))


class EnterSwitch(Switch):
    """A switch where Space toggles and Enter moves on, like every other field."""

    BINDINGS = [Binding("space", "toggle_switch", "Toggle", show=False)]
    inherit_bindings = False  # Switch binds Enter to toggle too

    def key_enter(self, event: events.Key) -> None:
        event.stop()
        _submit_from(self)


class EnterSelect(Select):
    """A Select where Enter accepts the shown choice and moves on; Space, Up or Down open
    the list."""

    BINDINGS = [Binding("space,down,up", "show_overlay", "Choose", show=False)]
    inherit_bindings = False

    def key_enter(self, event: events.Key) -> None:
        if self.expanded:
            return  # the open list takes Enter as its choice
        event.stop()
        _submit_from(self)


class PromptArea(TextArea):
    """A text area where Enter on an empty box moves on (nothing typed = the default); once
    something is typed, Enter starts a new line and Ctrl+N goes to the next step."""

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter" and not self.text.strip():
            event.stop()
            event.prevent_default()
            _submit_from(self)
            return
        await super()._on_key(event)


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
        yield Label(self._label_markup(spec.default_text), classes="field-label")
        yield Static(escape(spec.doc), classes="field-doc")
        yield Static("", classes="field-note")
        yield self._make_input()
        yield Static("", classes="field-error")

    def _label_markup(self, default_text: str) -> str:
        if self.spec.section == "wizard":
            return f"[b]{escape(self.spec.label)}[/b]"
        return (f"[b]{escape(self.spec.label)}[/b]  [dim]default: "
                f"{escape(default_text)}[/dim]")

    def _make_input(self):
        spec, text = self.spec, self._text
        if spec.kind == "choice":
            choices = spec.choices or ()
            options = list(zip(spec.labels or choices, choices, strict=True))
            value = text if text in choices else spec.default
            return EnterSelect(options, value=value, allow_blank=False, classes="field-input")
        if spec.kind == "tristate":
            return EnterSelect(_TRISTATE, value=text.lower() if text else "",
                               allow_blank=False, classes="field-input")
        if spec.kind == "switch":
            current = text.lower() == "true" if text else bool(spec.default)
            return EnterSwitch(value=current, classes="field-input")
        if spec.kind == "multiline":
            return PromptArea(text, classes="field-input field-multiline")
        return Input(value=text, placeholder=f"Enter: {spec.default_text}",
                     suggester=PathSuggester(self._base_dir) if spec.is_path else None,
                     classes="field-input")

    def set_default_text(self, default_text: str) -> None:
        """Show another default (one that depends on other answers)."""
        self.query_one(".field-label", Label).update(self._label_markup(default_text))
        widget = self.input_widget
        if isinstance(widget, Input):
            widget.placeholder = f"Enter: {default_text}"

    def set_note(self, markup: str) -> None:
        """A live line under the doc (Rich markup; empty hides it)."""
        note = self.query_one(".field-note", Static)
        note.update(markup)
        note.display = bool(markup)

    @property
    def input_widget(self):
        return self.query_one(".field-input")

    def set_text(self, text: str) -> None:
        """Show ``text`` (after the draft changed behind the editor, e.g. a one-key fix)."""
        self._text = text
        widget = self.input_widget
        with widget.prevent(Input.Changed, Select.Changed, Switch.Changed, TextArea.Changed):
            if isinstance(widget, Input):
                widget.value = text
            elif isinstance(widget, TextArea):
                widget.load_text(text)
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

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self._changed(event.text_area.text)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self._changed("true" if event.value else "false")
