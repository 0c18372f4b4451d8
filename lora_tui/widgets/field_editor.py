"""One profile field: its label and default, a one-line explanation, the input, and the
profile's message when the value is not allowed.

Which input is drawn follows the field's metadata: a Select for choices (and for a bool that
may be unset), a Switch for a bool, a TextArea for the wizard's multi-line questions, an
Input otherwise (with path completion for paths). Enter accepts what a field holds and moves
on in every kind of input, a closed Select too, as Enter does in a web form: there Up and
Down change the choice in place and Space opens the list, which a line under the focused
Select says (Enter opening it would take two keys to accept a default, and a burst of
answers typed with Enter between them would stop in the list). Empty input means the
default; the editor reports raw text and never judges it: the screen asks the draft, which
asks the profile. A note line under the doc carries what the screen learns live (the model
that was detected, the optimizer's recommended arguments).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch, TextArea
from textual.widgets._select import SelectOverlay

from lora_tui.draft import FieldSpec
from lora_tui.widgets.ordered_keys import OrderedInput, OrderedKeys, focus_now, pass_key
from lora_tui.widgets.path_input import PathInput


def escape(text: str) -> str:
    """``text`` shown as is in Textual markup: every ``[`` is escaped (rich's escape leaves
    ``["a=1"]`` alone, which Textual's parser then reads as a tag)."""
    return text.replace("[", "\\[")


_TRISTATE = (("unset (detect)", ""), ("true", "true"), ("false", "false"))
DOC_LINES = 2  # lines of help a field shows while another field has focus
MODEL_FIELD = ("model", "pretrained_model_name_or_path")


def _submit_from(widget) -> None:
    field = next(a for a in widget.ancestors if isinstance(a, FieldEditor))
    field.post_message(FieldEditor.Submitted(field))


class EnterSwitch(OrderedKeys, Switch):
    """A switch where Space toggles and Enter moves on, like every other field."""

    BINDINGS = [Binding("space", "toggle_switch", "Toggle", show=False)]
    inherit_bindings = False  # Switch binds Enter to toggle too

    def key_enter(self, event: events.Key) -> None:
        event.stop()
        _submit_from(self)


SELECT_KEYS = "[dim]↑/↓: change · Space: all choices · Enter: keep it and go on[/dim]"


class EnterSelect(OrderedKeys, Select):
    """A Select where Enter accepts the shown choice and moves on; Up and Down change the
    choice in place (no list to open and close: keys typed in a burst stay in order) and
    Space opens the list."""

    BINDINGS = [Binding("space", "show_overlay", "Choose", show=False),
                Binding("down", "step_choice(1)", "Next choice", show=False),
                Binding("up", "step_choice(-1)", "Previous choice", show=False)]
    inherit_bindings = False

    def action_step_choice(self, step: int) -> None:
        values = [value for _prompt, value in self._options if value is not Select.NULL]
        if not values:
            return
        index = values.index(self.value) if self.value in values else -1
        self.value = values[max(0, min(len(values) - 1, index + step))]

    def action_show_overlay(self) -> None:
        super().action_show_overlay()
        # The list has the keys typed next at once (Select focuses it later; see
        # widgets/ordered_keys.py).
        focus_now(self.query_one(SelectOverlay))

    def key_enter(self, event: events.Key) -> None:
        if self.expanded:
            return  # the open list takes Enter as its choice
        event.stop()
        _submit_from(self)


class PromptArea(TextArea):
    """A text area where Enter on an empty box moves on (nothing typed = the default); once
    something is typed, Enter starts a new line and Ctrl+N goes to the next step."""

    async def _on_key(self, event: events.Key) -> None:
        if self.app.focused is not self:  # typed after Enter moved on: it belongs there
            event.stop()
            event.prevent_default()
            pass_key(self.app, event)
            return
        if event.key == "enter" and not self.text.strip():
            event.stop()
            event.prevent_default()
            field = next(a for a in self.ancestors if isinstance(a, FieldEditor))
            field.submit_now()  # at once: the next key goes where Enter moved the focus
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
        self._default_text = spec.default_text
        self.offered: str | None = None  # a path offered for an empty field (Tab takes it)
        # Changed messages posted and not yet taken by the screen (``taken``): until then
        # the draft holds an older text than this editor shows.
        self._unreported = 0

    @property
    def text(self) -> str:
        """What the input holds now. Read from the widget, never from a message: keys typed
        in a burst (a paste, SSH) change the input several times before the first Changed
        message is handled, and a stale value written back would scramble the typing."""
        if not self.is_mounted:
            return self._text
        widget = self.input_widget
        if isinstance(widget, Input):
            return widget.value
        if isinstance(widget, TextArea):
            return widget.text
        if isinstance(widget, Switch):
            if not self._text and widget.value == bool(self.spec.default):
                return ""  # untouched: the default
            return "true" if widget.value else "false"
        value = widget.value if isinstance(widget.value, str) else ""
        if not self._text and self.spec.kind == "choice" and value == self.spec.default:
            return ""  # untouched: the default
        return value

    @property
    def typing_ahead(self) -> bool:
        """Keys typed into the input have not been reported yet (their Changed messages
        are still queued): what the draft holds for it is older than what it shows, and
        writing that back would drop the keys (a burst: ``C-u 64 Tab Tab C-u 64``). Also
        while its own Changed message waits behind another field's: another field's message
        refreshing the step then would write the draft's older text over the one typed
        (a Flux model's ``... Enter C-u <clip_l> Enter C-u <t5xxl>`` lost the T5 path)."""
        if self._unreported > 0:
            return True
        return self.is_mounted and self.ready and isinstance(self.input_widget, Input) \
            and self.input_widget.value != self._text

    def taken(self) -> None:
        """The screen took one of this editor's Changed messages into the draft."""
        self._unreported = max(0, self._unreported - 1)

    @property
    def ready(self) -> bool:
        """Its parts (label, input, message lines) are in place: an editor just mounted
        has none until its compose has run."""
        return bool(self.children)

    def on_mount(self) -> None:
        widget = self.input_widget
        if isinstance(widget, OrderedKeys):
            # Enter accepts the field as the key is read (see ordered_keys), so the next
            # key typed goes to the field that follows.
            widget.submit = self.submit_now
        self._show_doc()

    def submit_now(self) -> None:
        submit = getattr(self.screen, "submit_field", None)
        if submit is not None:
            submit(self)
        else:
            self.post_message(self.Submitted(self))

    def compose(self) -> ComposeResult:
        spec = self.spec
        yield Label(self._label_markup(spec.default_text), classes="field-label")
        yield Static(escape(spec.doc), classes="field-doc")  # clipped in _show_doc
        yield Static("", classes="field-note")
        yield self._make_input()
        if spec.kind == "multiline":
            yield Static("[dim]Enter: new line · Ctrl+N: next step (Enter in an empty box "
                         "moves on)[/dim]", classes="field-keys")
        if spec.kind in ("choice", "tristate"):
            yield Static(SELECT_KEYS, classes="field-keys select-keys")  # while focused
        if spec.is_path:
            yield Static("", classes="field-keys field-matches")  # what Tab found
        yield Static("", classes="field-error")

    def _label_markup(self, default_text: str) -> str:
        if self.spec.section == "wizard":
            return f"[b]{escape(self.spec.label)}[/b]"
        return (f"[b]{escape(self.spec.label)}[/b]  [dim]default: "
                f"{escape(default_text)}[/dim]")

    def _make_input(self):
        spec, text = self.spec, self._text
        if spec.kind == "choice":
            return EnterSelect(self._choice_options(text), value=text or spec.default,
                               allow_blank=False, classes="field-input")
        if spec.kind == "tristate":
            return EnterSelect(_TRISTATE, value=text.lower() if text else "",
                               allow_blank=False, classes="field-input")
        if spec.kind == "switch":
            current = text.lower() == "true" if text else bool(spec.default)
            return EnterSwitch(value=current, classes="field-input")
        if spec.kind == "multiline":
            return PromptArea(text, classes="field-input field-multiline")
        if spec.is_path:
            return PathInput(text, self._base_dir, placeholder=self._placeholder(),
                             classes="field-input",
                             builtins=(spec.section, spec.key) == MODEL_FIELD)
        return OrderedInput(value=text, placeholder=f"Enter: {spec.default_text}",
                            classes="field-input")

    # -- the doc: two lines while the field is not focused, all of it while it is --------

    def on_resize(self) -> None:
        self._show_doc()

    def on_descendant_focus(self) -> None:
        self._show_doc()
        # Focused as its step mounts (before the first layout): the help unfolded then
        # keeps its folded height unless it is laid out again.
        self.call_after_refresh(lambda: self.query_one(".field-doc").refresh(layout=True))

    def on_descendant_blur(self) -> None:
        self._show_doc()

    @property
    def doc_expanded(self) -> bool:
        focused = self.screen.focused if self.is_mounted else None
        return focused is not None and focused in self.walk_children()

    def _show_doc(self) -> None:
        """The whole doc while the field has focus; else its first two lines, the second
        ending in "…" when there is more (so nothing is cut without saying so)."""
        for keys in self.query(".select-keys"):
            keys.display = self.doc_expanded
        doc = self.query_one(".field-doc", Static)
        width = max(20, self.content_size.width or self.size.width or 78)
        lines = textwrap.wrap(self.spec.doc, width)
        if self.doc_expanded or len(lines) <= DOC_LINES:
            doc.update(escape(self.spec.doc))
            return
        shown = lines[:DOC_LINES]
        shown[-1] = textwrap.shorten(shown[-1] + " " + lines[DOC_LINES], width - 1,
                                     placeholder="") + "…"
        doc.update(escape("\n".join(shown)))

    def _placeholder(self) -> str:
        if self.offered:
            return f"Tab: {self.offered} · Enter: {self._default_text}"
        return f"Enter: {self._default_text}"

    def set_default_text(self, default_text: str) -> None:
        """Show another default (one that depends on other answers)."""
        self._default_text = default_text
        self.query_one(".field-label", Label).update(self._label_markup(default_text))
        widget = self.input_widget
        if isinstance(widget, Input):
            widget.placeholder = self._placeholder()

    def offer(self, path: str | None) -> None:
        """Offer ``path`` for this empty path field: shown in its placeholder, taken with Tab
        or Right as a completion is (``PathInput.offered``), never put in by itself."""
        if path == self.offered:
            return
        self.offered = path
        widget = self.input_widget
        if isinstance(widget, PathInput):
            widget.offered = path or ""
            widget.placeholder = self._placeholder()

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
                if text and text not in (self.spec.choices or ()):
                    widget.set_options(self._choice_options(text))  # a value beyond them
                widget.value = text or self.spec.default

    def _choice_options(self, text: str) -> list[tuple[str, str]]:
        """The field's choices, and a value the profile holds beyond them (an optimizer by
        its import path, "torch.optim.RAdam") as a last option, so it is kept, not lost."""
        choices = self.spec.choices or ()
        options = list(zip(self.spec.labels or choices, choices, strict=True))
        if text and text not in choices:
            options.append((text, text))
        return options

    def set_errors(self, errors: list[str]) -> None:
        label = self.query_one(".field-error", Static)
        label.update(escape("\n".join(errors)))
        self.set_class(bool(errors), "has-error")

    def _changed(self, text: str) -> None:
        self._text = text
        self._unreported += 1
        self.post_message(self.Changed(self, self.spec.section, self.spec.key, self.text))

    def show_matches(self, markup: str) -> None:
        """The matches Tab found for a path (PathInput), until the text changes."""
        matches = self.query_one(".field-matches", Static)
        matches.update(markup)
        matches.display = bool(markup)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if isinstance(event.input, PathInput) and not event.input.matches_current:
            self.show_matches("")
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
