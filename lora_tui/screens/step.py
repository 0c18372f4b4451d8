"""One step of the wizard: a few profile fields, checked as they are typed.

Enter in a field accepts it (an empty field takes the default) and moves to the next shown
field; Enter in the last one, or Ctrl+N anywhere, goes on to the next step. Escape goes back
with every answer kept (answers live in the draft, not in the screen). Ctrl+O shows or hides
the step's advanced options; Ctrl+S saves the profile (asking for a path the first time).

Fields that do not apply to the other answers (``steps.CONDITIONS``) are hidden, not
disabled, and shown again as soon as they apply. Messages under the fields are the engine's
own, as values that name their field: the profile's rules as answers are typed, and every
check ``lora-train check`` makes (the files the answers name, the dataset, the machine) a
moment after typing pauses, in a worker. A problem about a field of this step that is not
shown (an advanced option) is listed under the step. The base-model step says live what the
model is (``inspect_model``, headers only); the image steps show the dataset check and offer
Ctrl+R when a concept folder was picked instead of its parent.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Select, Static
from textual.worker import Worker, WorkerState

from lora_core.checks.machine import ProbedMachine
from lora_core.checks.problem import Problem
from lora_core.errors import LoraError
from lora_core.family_registry import family, family_label
from lora_core.profile import ADAPTIVE_OPTIMIZERS
from lora_tui.dataset_check import DatasetCheck, check_dataset
from lora_tui.draft import Draft, machine_precision, spec_for
from lora_tui.flux_files import FLUX_FILES, USUAL_NAMES, WHAT, offered_text
from lora_tui.screens.review import ReviewScreen, save_with_prompt
from lora_tui.steps import STEPS, Step
from lora_tui.widgets.dataset_table import DatasetTable
from lora_tui.widgets.field_editor import FieldEditor, escape
from lora_tui.widgets.ordered_keys import focus_now, refuse_keys_typed_before

_CHECK_DELAY_S = 0.3  # wait for typing to pause before scanning folders
# Fields later steps ask for, as stand-ins for the model step's own check of a Flux model's
# files (they change nothing in it).
_LATER_REQUIRED = {("dataset", "train_data_dir"): "__not yet chosen__",
                   ("saving", "output_dir"): "__not yet chosen__"}


@cache
def gpus_note() -> str:
    """The GPUs this machine has, for the process-count question (asked of the driver once;
    no torch)."""
    gpus = ProbedMachine().gpus
    if not gpus:
        return "[i]no CUDA GPU here: keep 1 (several processes are for several GPUs)[/i]"
    listed = "; ".join(escape(gpu.label()) for gpu in gpus)
    return f"[i]{len(gpus)} GPU(s) here: {listed}[/i]"

# What each optimizer is usually given in optimizer_args (the hint under that field). The
# AdamW family's are what an unset optimizer_args means (LETS' defaults); Prodigy's are the
# settings its README suggests for diffusion fine-tuning; AdaFactor's turn off its own step
# size so the learning rate and schedule apply (then constant_with_warmup is usual).
_ADAMW = '["weight_decay=0.1", "betas=0.9,0.99"] (what unset means)'
RECOMMENDED_ARGS = {
    "AdamW": _ADAMW, "AdamW8bit": _ADAMW, "PagedAdamW8bit": _ADAMW, "PagedAdamW": _ADAMW,
    "PagedAdamW32bit": _ADAMW,
    "Lion": '["weight_decay=0.1", "betas=0.9,0.99"], with a learning rate 3-10x lower',
    "Lion8bit": '["weight_decay=0.1", "betas=0.9,0.99"], with a learning rate 3-10x lower',
    "PagedLion8bit": '["weight_decay=0.1", "betas=0.9,0.99"], with a learning rate 3-10x lower',
    "SGDNesterov": '["momentum=0.9"] (added when unset)',
    "SGDNesterov8bit": '["momentum=0.9"] (added when unset)',
    "Prodigy": '["decouple=True", "weight_decay=0.01", "d_coef=2", '
               '"use_bias_correction=True", "safeguard_warmup=True"]',
    "DAdaptation": '["decouple=True", "weight_decay=0.01"]',
    "DAdaptAdam": '["decouple=True", "weight_decay=0.01"]',
    "DAdaptAdamPreprint": '["decouple=True", "weight_decay=0.01"]',
    "AdaFactor": '["scale_parameter=False", "relative_step=False", "warmup_init=False"] to '
                 'use your learning rate (unset: relative_step=True, it picks its own)',
}


class StepScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+o", "toggle_advanced", "Advanced"),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "use_parent", "Use parent folder", show=False),
        Binding("ctrl+t", "captions", "Captions"),
    ]

    def __init__(self, index: int, from_review: bool = False) -> None:
        super().__init__(classes="step-screen")
        self.index = index
        self.from_review = from_review
        self.last_check: DatasetCheck | None = None
        self.show_advanced = False
        self._check_timer: Timer | None = None
        self._show_required = False  # "is required" appears once Next was tried
        self.check_problems: list[Problem] = []  # the full check's, located on this step
        self._answers_changed = 0  # counts answer changes: a check of older answers is stale
        self._checked_answers = -1  # the answer count the last applied check was made for
        self._flux_check: tuple[str, list[Problem]] = ("", [])  # answers -> their problems
        self._submitted: set[tuple[str, str]] = set()  # fields Enter was pressed in
        self._next_tried = False  # Ctrl+N (or Enter in the last field) was pressed

    @property
    def step(self) -> Step:
        return STEPS[self.index]

    @property
    def draft(self) -> Draft:
        return self.app.draft  # type: ignore[attr-defined]

    @property
    def editors(self) -> list[FieldEditor]:
        """The field editors ready to use: an advanced one being mounted (Ctrl+O mounts
        them one by one, and a check may end in between) has no parts yet."""
        return [e for e in self.query(FieldEditor) if e.ready]

    @property
    def shown_editors(self) -> list[FieldEditor]:
        return [e for e in self.editors if e.display]

    def editor(self, section: str, key: str) -> FieldEditor:
        return self.query_one(f"#field-{section}-{key}", FieldEditor)

    def compose(self) -> ComposeResult:
        step = self.step
        # The short path (app.steps_in_path: model, images, output) counts its own steps.
        total = getattr(self.app, "steps_in_path", len(STEPS))
        short = not self.from_review and self.index < total < len(STEPS)
        yield Static(f"[b]Step {self.index + 1} of {total if short else len(STEPS)}: "
                     f"{escape(step.title)}[/b]"
                     + ("  [dim](editing from review)[/dim]" if self.from_review else "")
                     + ("  [dim](then the review)[/dim]" if short else ""),
                     classes="step-title")
        with VerticalScroll(classes="step-body"):
            yield Static(escape(step.intro), classes="step-intro")
            for section, key in step.fields:
                yield FieldEditor(spec_for(section, key), self.draft.text(section, key),
                                  self.draft.base_dir)
            # Advanced fields are built when first shown (fewer widgets: faster steps),
            # except those already answered, which are always in sight.
            yield from self._advanced_editors(answered_only=True)
            if step.advanced:
                yield Static("", id="advanced-hint")
            if step.dataset_check:
                yield DatasetTable(id="dataset-check")
            yield Static("", id="step-errors")
        yield Footer()

    def _advanced_editors(self, answered_only: bool) -> list[FieldEditor]:
        present = {(e.spec.section, e.spec.key) for e in self.query(FieldEditor)} \
            if self.is_mounted else set()
        editors = []
        for section, key in self.step.advanced:
            text = self.draft.text(section, key)
            if (section, key) in present or (answered_only and text == ""):
                continue
            editor = FieldEditor(spec_for(section, key), text, self.draft.base_dir)
            editor.add_class("advanced")
            editors.append(editor)
        return editors

    async def _mount_advanced(self) -> None:
        """Build the advanced editors not built yet, each in its place in the step."""
        missing = {(e.spec.section, e.spec.key): e
                   for e in self._advanced_editors(answered_only=False)}
        previous = self.editor(*self.step.fields[-1])
        for key in self.step.advanced:
            if key in missing:
                await self.query_one(".step-body").mount(missing[key], after=previous)
                previous = missing[key]
            else:
                previous = self.editor(*key)

    def on_mount(self) -> None:
        self.refresh_fields()
        focus_now(self.shown_editors[0].input_widget)  # keys typed before it wait for it
        self.schedule_check()

    def on_screen_resume(self) -> None:
        # A step reopened from review may have changed answers behind this screen.
        self.refresh_fields()
        self.schedule_check()

    # -- what is shown -------------------------------------------------------------------

    def refresh_fields(self) -> bool:
        """Bring every editor in line with the draft: its text (answers derived from
        others, such as clip skip from the model style), whether it is shown, its default,
        its live note and the profile's messages. True when this step has no problem."""
        draft = self.draft
        for editor in self.editors:
            section, key = editor.spec.section, editor.spec.key
            text = draft.text(section, key)
            # The draft holds each field's live text (field_changed), so they differ only
            # when an answer changed behind the field: derived from another, a one-key fix.
            if editor.text != text and not editor.typing_ahead:
                editor.set_text(text)
            shown = draft.applies(section, key)
            if editor.has_class("advanced") and not self.show_advanced and text == "":
                shown = False
            editor.display = shown
            default = draft.default_text(section, key)
            if default != editor.spec.default_text or editor.has_class("default-changed"):
                editor.set_default_text(default)
                editor.set_class(default != editor.spec.default_text, "default-changed")
        if self.step.advanced:
            advanced_hidden = 0 if self.show_advanced else sum(
                1 for key in self.step.advanced
                if draft.text(*key) == "" and draft.applies(*key))
            hint = self.query_one("#advanced-hint", Static)
            hint.update(f"[dim]Ctrl+O: {advanced_hidden} more option(s)[/dim]"
                        if advanced_hidden else "[dim]Ctrl+O: hide the advanced options[/dim]"
                        if self.show_advanced else "")
        self._update_notes()
        return self.revalidate()

    def _update_notes(self) -> None:
        keys = {(e.spec.section, e.spec.key) for e in self.editors}
        if ("model", "pretrained_model_name_or_path") in keys:
            self.editor("model", "pretrained_model_name_or_path").set_note(self._model_note())
        for key in FLUX_FILES:
            if ("flux", key) in keys:
                self._offer_flux_file(self.editor("flux", key))
        if ("optimizer", "optimizer_args") in keys:
            name = self.draft.current("optimizer", "optimizer_type")
            advice = RECOMMENDED_ARGS.get(name)
            self.editor("optimizer", "optimizer_args").set_note(
                f"[i]{escape(name)}: usually {escape(advice)}[/i]" if advice
                else f"[i]{escape(name)}: usually none[/i]")
        if ("training", "num_processes") in keys:
            self.editor("training", "num_processes").set_note(gpus_note())
        if ("training", "mixed_precision") in keys:  # why a new profile has what it has
            value, why = machine_precision()
            self.editor("training", "mixed_precision").set_note(
                f"[i]This machine: {escape(why)}. A new profile starts with "
                f"\"{value}\".[/i]")
        if ("optimizer", "learning_rate") in keys:
            name = self.draft.current("optimizer", "optimizer_type")
            self.editor("optimizer", "learning_rate").set_note(
                f"[i]{escape(name)} finds its own step size; the learning rate multiplies it, "
                "so 1.0 is usual[/i]" if name in ADAPTIVE_OPTIMIZERS else "")

    def _model_note(self) -> str:
        """The detected model (family and summary) or why it cannot be used."""
        draft = self.draft
        if not draft.text("model", "pretrained_model_name_or_path").strip():
            return ""
        source = draft.model_source()
        if isinstance(source, LoraError):
            hint = f"\n[dim]{escape(source.hint)}[/dim]" if source.hint else ""
            return f"[red]unusable: {escape(source.message)}[/red]{hint}"
        if source.family is None:
            return (f"[yellow]{escape(source.summary or source.name)}[/yellow]\n[dim]the family "
                    "is told when it loads: say below whether it is SD 2.x[/dim]")
        flux = draft.flux_model()
        if flux is not None:
            summary = source.summary or source.name
            for said in (f"Flux.1 {flux.variant}", "Flux.1"):  # the label says it already
                if summary.startswith(said + " "):
                    summary = summary[len(said):].strip()
                    break
            files = "ae and t5xxl (no CLIP-L)" if flux.variant == "chroma" \
                else "ae, clip_l and t5xxl"
            where = (f"it brings its own {files}" if flux.builtin
                     else f"it trains with the {files} files asked below")
            if flux.variant == "chroma" and draft.current("flux", "apply_t5_attn_mask") \
                    != "true":
                where += ("; Chroma trains with the T5 attention mask: Ctrl+O, apply t5 attn "
                          "mask")
            return (f"[green]detected: {flux.label}[/green] [dim]{escape(summary)}[/dim]\n"
                    f"[dim]{where}[/dim]")
        family = family_label(source.family)
        summary = source.summary or source.name
        if summary.startswith(family):  # "SD1 built-in 'tiny-sd1': ..." says it already
            return f"[green]detected:[/green] {escape(summary)}"
        return f"[green]detected: {family}[/green] [dim]{escape(summary)}[/dim]"

    def revalidate(self) -> bool:
        """Show the problems at this step's fields (the profile's rules now, the last full
        check's too); True when none of them is an error."""
        validation = self.draft.validate()
        located: dict[tuple[str, str], list[str]] = {}
        in_table: set[tuple[str, str]] = set()  # the dataset table shows these
        for problem in self.step_problems():
            if self.step.dataset_check and problem.section == "dataset":
                in_table.add(problem.field)
            else:
                located.setdefault(problem.field, []).append(problem.text())
        clean, elsewhere = True, []
        for editor in self.editors:
            key = (editor.spec.section, editor.spec.key)
            errors = validation.for_field(*key)
            if not self._show_required and editor.text == "":
                errors = [e for e in errors if "is required" not in e]
            found = [e for e in located.pop(key, []) if e not in errors]
            if editor.display:
                editor.set_errors(errors + found)
                clean = clean and not validation.for_field(*key) and not found \
                    and key not in in_table and not self._model_problem(key)
            else:
                editor.set_errors(errors)
                elsewhere += found
        step_fields = {*self.step.fields, *self.step.advanced}
        elsewhere += [text for key, texts in located.items() if key in step_fields
                      for text in texts]  # advanced fields not built yet
        self.query_one("#step-errors", Static).update(
            "\n".join(f"[red]problem:[/red] {escape(text)}" for text in elsewhere))
        return clean and not elsewhere

    @on(FieldEditor.Changed)
    def field_changed(self, event: FieldEditor.Changed) -> None:
        # The editor's live text, not the message's: later keys of a burst may already be in.
        event.editor.taken()
        self._answer_changed((event.section, event.key), event.editor.text)
        self.refresh_fields()
        self.schedule_check()

    def editor_of(self, widget) -> FieldEditor | None:
        """The field editor ``widget`` belongs to, if any."""
        return next((a for a in widget.ancestors_with_self if isinstance(a, FieldEditor)),
                    None)

    @on(FieldEditor.Submitted)
    def field_submitted(self, event: FieldEditor.Submitted) -> None:
        self.submit_field(event.editor)

    def submit_field(self, editor: FieldEditor) -> None:
        """Enter accepts the field and moves on, as Ctrl+N would: not past a field the
        profile refuses (an empty required one included). Called by the app as the key
        arrives for text inputs (ordered keys), by the Submitted message for the others."""
        key = (editor.spec.section, editor.spec.key)
        self._submitted.add(key)
        if self.sync_draft():  # what the fields hold right now
            self.refresh_fields()  # which fields apply (a choice typed just before Enter)
        self.check_now()
        validation = self.draft.validate()
        if editor.spec.required:
            self._show_required = True
        problems = validation.for_field(*key) + [p.text() for p in self.step_problems()
                                                 if p.field == key] + self._model_problem(key)
        if problems:
            self.revalidate()
            focus_now(editor.input_widget)
            # Keys that came with this Enter (a paste, a fast link) were meant for the next
            # field: they are left out, not typed into this one.
            refuse_keys_typed_before(editor.input_widget)
            naming = _naming(editor)
            text = problems[0] if naming in problems[0] else f"{naming}: {problems[0]}"
            if editor.spec.kind in ("choice", "tristate"):  # how to change a choice
                text += " (↑/↓ or Space: another choice)"
            if editor.offered and not editor.text:
                text += f" (Tab takes {editor.offered}, found beside the model)"
            self.notify(f"fix this first: {text}", severity="error", timeout=6)
            return
        editors = self.shown_editors
        position = editors.index(editor) if editor in editors else len(editors)
        if position + 1 < len(editors):
            # At once, not with Widget.focus(): the keys typed after Enter are read next
            # and belong to the field Enter moves to (see widgets/ordered_keys.py).
            focus_now(editors[position + 1].input_widget)
        else:
            self.action_next()

    def _offer_flux_file(self, editor: FieldEditor) -> None:
        """``[flux] ae / clip_l / t5xxl``: the file of the usual name beside the transformer,
        offered (placeholder and note; Tab or Right takes it), never written by itself."""
        draft, key = self.draft, editor.spec.key
        model, offer, note = draft.flux_model(), None, ""
        if model is not None and not draft.text("flux", key):
            if model.builtin:
                note = "[i]empty: the built-in's own file[/i]"
            else:
                offer = offered_text(draft.text("model", "pretrained_model_name_or_path"),
                                     model, key)
                note = (f"[i]found beside the model: {escape(offer)} (Tab takes it)[/i]"
                        if offer else f"[i]no {USUAL_NAMES[key][0]} beside the model: give "
                        f"the path of {WHAT[key]}[/i]")
        editor.offer(offer)
        editor.set_note(note)

    def step_problems(self) -> list[Problem]:
        """The full check's problems about this step's fields, and on the model step of a
        model of several files (Flux) its family's own checks of them, as ``check`` and ``run``
        resolve them; the full check cannot run before the images are chosen). A problem at
        an empty field Enter was not pressed in yet waits for Next, as "is required" does."""
        found = list(self.check_problems)
        said = {p.text() for p in found}
        for problem in self._family_problems():
            if problem.text() in said:
                continue
            if problem.field and not self.draft.text(*problem.field) \
                    and not self._next_tried and problem.field not in self._submitted:
                continue
            found.append(problem)
        return found

    def _family_problems(self) -> list[Problem]:
        """The family's checks of the files beside the model (Flux's ae / clip_l / t5xxl)."""
        source = self.draft.model_source()
        if not self.step.model_check or isinstance(source, LoraError) \
                or source.family is None or not family(source.family).model_files:
            return []
        validation = self.draft.validate(_LATER_REQUIRED)
        if validation.profile is None:
            return []
        answers = repr(self.draft.data(_LATER_REQUIRED))
        if self._flux_check[0] != answers:
            self._flux_check = (answers, family(source.family).input_problems(
                validation.profile, source))
        return self._flux_check[1]

    def _model_problem(self, key: tuple[str, str]) -> list[str]:
        """The base model field's own live check (the note under it: what the file is, or
        why it cannot be used); the full check cannot run before the images are chosen."""
        if key != ("model", "pretrained_model_name_or_path") \
                or not self.draft.text(*key).strip():
            return []
        source = self.draft.model_source()
        return [source.message] if isinstance(source, LoraError) else []

    def check_now(self) -> None:
        """Run the full check at once when the last one is older than the answers: Enter
        and Ctrl+N must not pass a problem it has not reported yet (answers typed and
        accepted in one burst come faster than the check that waits for typing to pause)."""
        if self._checked_answers == self._answers_changed:
            return
        if self._check_timer is not None:
            self._check_timer.stop()
        self._apply_check(self._answers_changed, check_dataset(self.draft))

    def _answer_changed(self, key: tuple[str, str], text: str) -> None:
        self.draft.set_text(*key, text)
        self._answers_changed += 1
        # The last full check said nothing about this new answer yet: its word on the
        # field is dropped until the check (scheduled on every change) runs again.
        self.check_problems = [p for p in self.check_problems if p.field != key]

    def sync_draft(self) -> bool:
        """Take every field's live text into the draft: a key (Enter, Ctrl+N) can be read
        before the messages of the keys typed just before it have reached the screen. True
        when an answer changed."""
        changed = False
        for editor in self.editors:
            key = (editor.spec.section, editor.spec.key)
            if self.draft.text(*key) != editor.text:
                self._answer_changed(key, editor.text)
                changed = True
        if changed:
            self.schedule_check()
        return changed

    def action_next(self, waited: int = 0) -> None:
        if waited < 40 and any(select.expanded for select in self.query(Select)):
            # A choice made with Enter in an open list reaches the Select as a message after
            # this key (Enter, then Ctrl+N at once): take the answer once it has landed, which
            # closes the list. Wait by the clock, not by refreshes (a busy machine refreshes
            # quickly with nothing done); a list opened and left open keeps its value: go on
            # after two seconds.
            self.set_timer(0.05, lambda: self.action_next(waited + 1))
            return
        if self.sync_draft():
            self.refresh_fields()
        self.check_now()
        self._show_required = self._next_tried = True
        if not self.revalidate():
            bad = next((e for e in self.shown_editors if e.has_class("has-error")
                        or self._model_problem((e.spec.section, e.spec.key))), None)
            if bad is None and self.step.dataset_check:  # the table shows its problem
                bad = next((e for e in self.shown_editors if e.spec.section == "dataset"
                            and any(p.field == (e.spec.section, e.spec.key)
                                    for p in self.check_problems)), None)
            if bad is not None:
                focus_now(bad.input_widget)
                refuse_keys_typed_before(bad.input_widget)
                self.notify(f"fix {_naming(bad)} first", severity="error")
            else:  # about an advanced option that is not shown: Ctrl+O shows it
                self.query_one("#step-errors").scroll_visible(animate=False)
                self.notify("fix the problem listed under this step first (Ctrl+O shows "
                            "the advanced options)", severity="error")
            return
        if self.from_review:
            self.dismiss()
        else:
            self.app.next_step(self.index)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        """The step before; from the first step of a new or changed profile, Escape leaves
        the wizard, and asks first as Ctrl+G does (it used to drop the answers typed)."""
        self.sync_draft()
        stack = self.app.screen_stack
        below = stack[-2] if len(stack) > 1 else None
        if self.draft.dirty and not isinstance(below, (StepScreen, ReviewScreen)):
            self.app.action_home()  # asks, then goes to the start menu
            return
        self.app.pop_screen()

    async def action_toggle_advanced(self) -> None:
        """Show the step's advanced options (or hide the unanswered ones again)."""
        if not self.step.advanced:
            self.notify("this step has no advanced options")
            return
        self.show_advanced = not self.show_advanced
        if self.show_advanced:
            await self._mount_advanced()
        self.refresh_fields()
        if self.show_advanced:
            first = next((e for e in self.shown_editors if e.has_class("advanced")), None)
            if first is not None:
                focus_now(first.input_widget)
                first.scroll_visible()
        elif self.focused is not None:
            owner = next((a for a in self.focused.ancestors_with_self
                          if isinstance(a, FieldEditor)), None)
            if owner is not None and not owner.display:
                focus_now(self.shown_editors[0].input_widget)

    def action_save(self) -> None:
        # What the fields hold right now: Ctrl+S can be read before the messages of the keys
        # typed just before it (a burst's last letters were left out of the file).
        if self.sync_draft():
            self.refresh_fields()
        save_with_prompt(self, self.draft)

    # -- the live dataset check -------------------------------------------------------

    def schedule_check(self) -> None:
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(_CHECK_DELAY_S, self._start_check)

    def _start_check(self) -> None:
        if self.step.dataset_check:
            self.query_one(DatasetTable).show_running()
        draft, answers = self.draft, self._answers_changed
        self.run_worker(lambda: (answers, check_dataset(draft)), thread=True, exclusive=True,
                        group="dataset-check", name="dataset-check")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "dataset-check" and event.state == WorkerState.SUCCESS:
            self._apply_check(*event.worker.result)

    def _apply_check(self, answers: int, check: DatasetCheck) -> None:
        """Show a check made when ``answers`` answers had changed (one made at once by
        Enter may be newer than a worker's that ends after it: the older is dropped)."""
        if answers < self._checked_answers:
            return
        self.last_check, self._checked_answers = check, answers
        if answers == self._answers_changed:  # else a newer check is on its way: its
            self.check_problems = self._located(check)  # word counts
        if self.step.dataset_check:
            self.query_one(DatasetTable).show(check)
        self.revalidate()
        self.refresh_bindings()

    def _located(self, check: DatasetCheck) -> list[Problem]:
        """The full check's errors about this step's fields (on an images step the table
        shows the dataset's own, and revalidate does not repeat them; the review lists
        everything)."""
        if check.report is None:
            return []
        fields = {*self.step.fields, *self.step.advanced}
        return [p for p in check.report.errors if p.field in fields]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "captions":  # on the images step, once its folder has been read
            return self.step.dataset_check and self._caption_folder() is not None
        if action == "use_parent":
            return self.last_check is not None and self.last_check.concept_parent is not None
        return True

    def _caption_folder(self) -> Path | None:
        """The folder holding the training images' folders, as the last check read it."""
        report = self.last_check.report if self.last_check is not None else None
        if report is None or report.scan is None:
            return None
        parents = {s.folder.parent for s in report.scan.subsets if not s.is_reg}
        if len(parents) == 1:
            return parents.pop()
        folders = [s.folder for s in report.scan.subsets if not s.is_reg]
        return folders[0] if folders else None

    def action_captions(self) -> None:
        """The captions dialog: tag table, tagging, trigger first, undo (Ctrl+T)."""
        folder = self._caption_folder()
        if folder is None or self.last_check is None or self.last_check.report is None:
            return
        subsets = [s for s in self.last_check.report.scan.subsets if not s.is_reg]
        trigger = subsets[0].class_tokens if subsets else ""
        extension = self.draft.current("dataset", "caption_extension") or ".txt"
        from lora_tui.dialogs.captions import CaptionsDialog  # on demand: startup stays lean

        self.app.push_screen(CaptionsDialog(folder, extension, trigger),
                             lambda changed: self.schedule_check() if changed else None)

    def action_use_parent(self) -> None:
        """The one-key fix: the parent of the concept folder becomes train_data_dir."""
        if self.last_check is None or self.last_check.concept_parent is None:
            return
        text = self.draft.text("dataset", "train_data_dir").rstrip("/\\")
        parent = str(Path(text).parent) if text else str(self.last_check.concept_parent)
        self.draft.set_text("dataset", "train_data_dir", parent)
        self.notify(f"`[dataset] train_data_dir` is now {parent}")
        self.refresh_fields()
        self.schedule_check()


def _naming(editor: FieldEditor) -> str:
    """A field as the inline errors name it (`` `[network] network_dim` ``); a wizard
    question, which is no profile field, by its label."""
    spec = editor.spec
    return spec.label if spec.section == "wizard" else f"`[{spec.section}] {spec.key}`"
