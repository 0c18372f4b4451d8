"""One step of the wizard: a few profile fields, checked as they are typed.

Enter in a field accepts it (an empty field takes the default) and moves to the next field;
Enter in the last field, or Ctrl+N anywhere, goes on to the next step. Escape goes back with
every answer kept (answers live in the draft, not in the screen). Messages under the fields
are the profile's own. The training-images step also runs the dataset check live and offers
Ctrl+R when a concept folder was picked instead of its parent.
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from lora_tui.dataset_check import DatasetCheck, check_dataset
from lora_tui.draft import Draft, field_spec
from lora_tui.steps import STEPS, Step
from lora_tui.widgets.dataset_table import DatasetTable
from lora_tui.widgets.field_editor import FieldEditor

_CHECK_DELAY_S = 0.3  # wait for typing to pause before scanning folders


class StepScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+r", "use_parent", "Use parent folder", show=False),
    ]

    def __init__(self, index: int, from_review: bool = False) -> None:
        super().__init__(classes="step-screen")
        self.index = index
        self.from_review = from_review
        self.last_check: DatasetCheck | None = None
        self._check_timer: Timer | None = None
        self._show_required = False  # "is required" appears once Next was tried

    @property
    def step(self) -> Step:
        return STEPS[self.index]

    @property
    def draft(self) -> Draft:
        return self.app.draft  # type: ignore[attr-defined]

    @property
    def editors(self) -> list[FieldEditor]:
        return list(self.query(FieldEditor))

    def editor(self, section: str, key: str) -> FieldEditor:
        return self.query_one(f"#field-{section}-{key}", FieldEditor)

    def compose(self) -> ComposeResult:
        step = self.step
        yield Static(f"[b]Step {self.index + 1} of {len(STEPS)}: {escape(step.title)}[/b]"
                     + ("  [dim](editing from review)[/dim]" if self.from_review else ""),
                     classes="step-title")
        with VerticalScroll(classes="step-body"):
            yield Static(escape(step.intro), classes="step-intro")
            for section, key in step.fields:
                yield FieldEditor(field_spec(section, key), self.draft.text(section, key),
                                  self.draft.base_dir)
            if step.dataset_check:
                yield DatasetTable(id="dataset-check")
            yield Static("", id="step-errors")
        yield Footer()

    def on_mount(self) -> None:
        self.editors[0].input_widget.focus()
        self.revalidate()
        self.schedule_check()

    def on_screen_resume(self) -> None:
        # A step reopened from review may have changed answers behind this screen.
        for editor in self.editors:
            text = self.draft.text(editor.spec.section, editor.spec.key)
            if editor.text != text:
                editor.set_text(text)
        self.revalidate()
        self.schedule_check()

    def revalidate(self) -> bool:
        """Show the profile's messages for this step's fields; True when there are none."""
        validation = self.draft.validate()
        clean = True
        for editor in self.editors:
            errors = validation.for_field(editor.spec.section, editor.spec.key)
            if not self._show_required and editor.text == "":
                errors = [e for e in errors if "is required" not in e]
            editor.set_errors(errors)
            clean = clean and not validation.for_field(editor.spec.section, editor.spec.key)
        return clean

    @on(FieldEditor.Changed)
    def field_changed(self, event: FieldEditor.Changed) -> None:
        self.draft.set_text(event.section, event.key, event.text)
        self.revalidate()
        self.schedule_check()

    @on(FieldEditor.Submitted)
    def field_submitted(self, event: FieldEditor.Submitted) -> None:
        editors = self.editors
        position = editors.index(event.editor)
        if position + 1 < len(editors):
            editors[position + 1].input_widget.focus()
        else:
            self.action_next()

    def action_next(self) -> None:
        self._show_required = True
        if not self.revalidate():
            bad = next(e for e in self.editors if e.has_class("has-error"))
            bad.input_widget.focus()
            self.notify(f"fix {bad.spec.label} first", severity="error")
            return
        if self.from_review:
            self.dismiss()
        else:
            self.app.next_step(self.index)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()

    # -- the live dataset check -------------------------------------------------------

    def schedule_check(self) -> None:
        if not self.step.dataset_check:
            return
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(_CHECK_DELAY_S, self._start_check)

    def _start_check(self) -> None:
        self.query_one(DatasetTable).show_running()
        draft = self.draft
        self.run_worker(lambda: check_dataset(draft), thread=True, exclusive=True,
                        group="dataset-check", name="dataset-check")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "dataset-check" and event.state == WorkerState.SUCCESS:
            self.last_check = event.worker.result
            self.query_one(DatasetTable).show(self.last_check)
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "use_parent":
            return self.last_check is not None and self.last_check.concept_parent is not None
        return True

    def action_use_parent(self) -> None:
        """The one-key fix: the parent of the concept folder becomes train_data_dir."""
        if self.last_check is None or self.last_check.concept_parent is None:
            return
        text = self.draft.text("dataset", "train_data_dir").rstrip("/\\")
        parent = str(Path(text).parent) if text else str(self.last_check.concept_parent)
        self.draft.set_text("dataset", "train_data_dir", parent)
        self.editor("dataset", "train_data_dir").set_text(parent)
        self.notify(f"train_data_dir is now {parent}")
        self.revalidate()
        self.schedule_check()
