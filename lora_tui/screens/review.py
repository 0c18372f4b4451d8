"""The review: the plan exactly as the trainer will run it (images x repeats, reg balance,
buckets, steps, warmup, when checkpoints and samples happen), the answers that differ from
the defaults, the equivalent ``lora-train`` command, and Save / Train.

Keys: Enter on a step in the list (or 1-9) reopens it (its Next comes back here), S saves
the profile (TOML; "save only, don't train"), T trains, Escape goes back to the last step;
PageUp/PageDown and Home/End scroll the review (whichever list has the focus), I shows an
import's report again, C calibrates (issue 28: the time and memory measured on this machine,
shown beside the plan; at once, without C, for answers measured before).

An opened profile changed here is not written behind the user's back: training it trains a
copy in the state folder, and the review says so; T (or Enter) first offers to save the
changes to the file (:class:`SaveFirstDialog`).

Saving lives here too (:func:`save_draft`, :func:`save_with_prompt`), because every step
saves the same way with Ctrl+S: sample prompts typed in the wizard are written next to the
profile as ``<output_name>-prompts.txt`` and ``sample_prompts`` names that file.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from lora_core.atomic import atomic_write_bytes
from lora_core.calibrate import recall
from lora_core.dataset.plan import TrainingPlan
from lora_core.errors import LoraError
from lora_core.notify import describe_webhook, destinations
from lora_core.paths import state_dir
from lora_core.profile import SECTIONS, Profile, SampleSection, profile_to_dict
from lora_core.profile_io import dumps_profile, save_profile, save_profile_data
from lora_core.training.sample_prompts import sample_points
from lora_tui.dataset_check import DatasetCheck, check_dataset
from lora_tui.dialogs.calibrate import CalibrateDialog, proposal_result, review_text
from lora_tui.dialogs.import_report import ImportReportDialog
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.dialogs.save_first import SaveFirstDialog
from lora_tui.draft import Draft, sections_of, to_text
from lora_tui.steps import STEPS
from lora_tui.widgets.field_editor import escape

_LISTED = 8  # checkpoints / sample points / buckets listed before "..."


def prompts_file_name(output_name: str) -> str:
    """Where typed sample prompts go, next to the profile."""
    return f"{output_name}-prompts.txt"


def profile_data_to_write(draft: Draft, path: Path) -> dict:
    """The profile as it will be written to ``path`` (every field, as TOML data): typed
    sample prompts are written to ``<output_name>-prompts.txt`` beside it and
    ``sample_prompts`` names that file; paths keep the text typed for them when ``path`` is
    in the folder they are relative to, elsewhere they are written absolute. Raises
    ProfileError (nothing written) for invalid answers."""
    profile = draft.profile()  # resolved: every path absolute
    data = profile_to_dict(profile)
    target_dir = Path(path).parent.resolve()
    same_dir = target_dir == Path(draft.base_dir).resolve()
    if same_dir:
        for section, cls in SECTIONS.items():
            for f in dataclasses.fields(cls):
                if f.metadata["path"] and draft.text(section, f.name) \
                        and f.name in data.get(section, {}):  # not a hidden [flux] file
                    data[section][f.name] = draft.text(section, f.name)
    if draft.typed_prompts.strip():
        prompts = target_dir / prompts_file_name(profile.saving.output_name)
        target_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(prompts, (draft.typed_prompts.strip() + "\n").encode("utf-8"))
        data["sample"]["sample_prompts"] = prompts.name if same_dir else str(prompts)
    return data


def save_draft(draft: Draft, path: Path) -> Path:
    """Write the draft's profile to ``path`` (see :func:`profile_data_to_write`); the draft
    then belongs to that file (its relative paths are taken from that file's folder)."""
    path = Path(path)
    data = profile_data_to_write(draft, path)
    save_profile_data(data, path)
    # The draft now answers for this file: carry over what was rewritten for it (absolute
    # paths, the prompt file), so its texts mean the same from the new folder.
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata["path"] and draft.text(section, f.name) \
                    and f.name in data.get(section, {}):
                draft.set_text(section, f.name, data[section][f.name])
    if draft.typed_prompts.strip():
        draft.set_text("sample", "sample_prompts", data["sample"]["sample_prompts"])
    draft.source_path, draft.base_dir, draft.dirty = path, path.resolve().parent, False
    return path


def save_with_prompt(screen: Screen, draft: Draft, ask: bool = False,
                     on_saved: Callable[[Path], None] | None = None) -> None:
    """Save the draft to its file, asking for a path the first time (or when ``ask``).
    Answers the profile refuses are shown, and nothing is written."""
    try:
        draft.profile()
    except LoraError as exc:
        screen.notify(f"cannot save yet: {exc.message}", severity="error", timeout=10)
        return

    def save_to(path: Path | None) -> None:
        if path is None:
            return
        try:
            save_draft(draft, path)
        except LoraError as exc:
            screen.notify(f"{exc.message}\n{exc.hint}", severity="error", timeout=10)
            return
        screen.notify(f"saved {path}")
        if on_saved is not None:
            on_saved(path)

    if draft.source_path is not None and not ask:
        save_to(draft.source_path)
        return
    name = draft.text("saving", "output_name") or "lora"
    default = draft.source_path or Path.cwd() / f"{name}.toml"
    screen.app.push_screen(PathPrompt("Save the profile as:", str(default), Path.cwd()),
                           save_to)


def copy_path(output_name: str) -> Path:
    """Where unsaved answers are written to be trained (absolute paths, so the copy runs
    from anywhere); the user's own files are never written behind their back."""
    return state_dir() / "wizard" / f"{output_name}.toml"


def calibration_snapshot(profile: Profile) -> tuple[Path, str]:
    """Where C writes the answers it measures (a snapshot: the user's file is not written)
    and what it writes there; the engine remembers a calibration by this content."""
    return (state_dir() / "wizard" / f"calibrate-{profile.saving.output_name}.toml",
            dumps_profile(profile))


def recall_calibration(path: Path, text: str) -> tuple[str, dict | None]:
    """The engine's remembered calibration of the snapshot ``text`` (written to ``path``, as
    C writes it), as ``lora-train calibrate --json``'s object, or None; ``text`` with it, so
    an answer for answers changed since is told apart. No torch: lora_core reads its memory
    (same content, dataset and model files, device, torch version) without it."""
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except (OSError, LoraError):
        return text, None
    result = recall(path)
    return text, None if result is None else result.as_json()


def run_command(profile_path: Path | None) -> str:
    shown = shlex.quote(str(profile_path)) if profile_path else "PROFILE.toml"
    return f"lora-train run {shown}"


def typed_changes_text(draft: Draft) -> str:
    """"Changed from the defaults" for answers that do not make a valid profile yet: each
    answer as given, beside the field's default."""
    defaults = sections_of(Profile())
    lines = ["[b]Changed from the defaults[/b] [dim](as given; fix the problems above)[/dim]"]
    for section, values in draft.data().items():
        if section not in SECTIONS:
            continue
        for key, value in values.items():
            default = defaults[section].get(key)
            if (section, key) == ("notify", "webhook") and isinstance(value, str):
                value = describe_webhook(value)  # its secret stays off the screen
            if value != default:
                lines.append(f"  {escape(f'[{section}] {key}')} = "
                             f"{escape(to_text(value) or '(empty)')}"
                             f"  [dim](default {escape(to_text(default) or 'unset')})[/dim]")
    return "\n".join(lines)


def flux_files_lines(draft: Draft) -> list[str]:
    """A Flux model's files as the run will take them (a field left empty for a built-in
    is the built-in's own file) and the T5 window, then what ``resolve_inputs`` (what
    ``check`` and ``run`` use) still stops on; nothing for an SD model."""
    model = draft.flux_model()
    if model is None:
        return []
    from lora_core.families.flux import builtin as tiny
    from lora_core.families.flux.inputs import T5_MAX_LENGTH, resolve_inputs

    lines = [f"[b]{escape(model.label)} files[/b]"]
    try:
        profile = draft.profile()
    except LoraError:
        return []  # the answers' own problems are shown above
    spec = profile.model.pretrained_model_name_or_path
    folder = tiny.tiny_flux_folder() if model.builtin else None
    own = {"ae": tiny.AE_FILE, "clip_l": tiny.CLIP_L_FILE, "t5xxl": tiny.T5_FILE}
    dit = spec if model.builtin else str(profile.path("model", "pretrained_model_name_or_path"))
    lines.append(f"  transformer: {escape(dit)}")
    for key in ("ae", "clip_l", "t5xxl"):
        if not model.uses(key):
            continue
        given = profile.path("flux", key)
        if given is not None:
            lines.append(f"  {key}: {escape(str(given))}")
        elif folder is not None:
            lines.append(f"  {key}: {escape(str(folder / own[key]))} [dim](the built-in's "
                         "own)[/dim]")
        else:
            lines.append(f"  {key}: [red](not given)[/red]")
    tokens = profile.flux.t5xxl_max_token_length or T5_MAX_LENGTH.get(model.variant, 512)
    lines.append(f"  T5 tokens per caption: {tokens}")
    try:
        resolve_inputs(profile)
    except LoraError as exc:
        lines.append(f"  [red]problem:[/red] {escape(exc.message)}")
    return lines


class ReviewScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "save", "Save"),
        Binding("ctrl+s", "save_quick", "Save", show=False),
        Binding("t", "train", "Train"),
        Binding("i", "import_report", "Import report"),
        Binding("c", "calibrate", "Calibrate"),
        # Over the focused list's own keys: the review is longer than 24 lines, and its
        # "Changed from the defaults" sits between the two lists (issue 24).
        Binding("pagedown", "scroll_body('page_down')", "Scroll", show=False, priority=True),
        Binding("pageup", "scroll_body('page_up')", "Scroll", show=False, priority=True),
        Binding("end", "scroll_body('end')", "Scroll", show=False, priority=True),
        Binding("home", "scroll_body('home')", "Scroll", show=False, priority=True),
        *[Binding(str(i + 1), f"edit({i})", step.title, show=False)
          for i, step in enumerate(STEPS[:9])],
    ]

    def __init__(self) -> None:
        super().__init__(classes="review-screen")
        self.check: DatasetCheck | None = None
        # The figures shown beside the plan: C's last result here, by the snapshot it measured
        # (shown even where the engine could not remember it), and the snapshot of the answers
        # as they are now (a recall for other answers is dropped).
        self._measured: tuple[str, dict] | None = None
        self._snapshot_text: str | None = None
        # Whether what was measured for the answers as they are now is known: shown, or
        # known to be nothing (then nothing is shown: the title says C calibrates).
        self.measured_known = False

    @property
    def draft(self) -> Draft:
        return self.app.draft  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Static("[b]Review[/b]  [dim]Enter: train · S save · C calibrate · 1-9: "
                     "change a step[/dim]", classes="step-title")
        with VerticalScroll(classes="step-body"):
            # First and focused: Enter on the review trains, so pressing Enter through every
            # step of a loaded profile trains it.
            yield OptionList(Option("Train now", id="train"),
                             Option("Save the profile", id="save"), id="review-actions")
            yield Static("", id="review-unsaved")
            yield Static("computing the plan...", id="review-plan")
            yield Static("", id="review-measured")
            yield Static("", id="review-command")
            yield Static("", id="review-changes")
            yield Static("[b]Change a step[/b]")
            yield OptionList(*[Option(f"{i + 1:>2}  {s.title}", id=str(i))
                               for i, s in enumerate(STEPS)], id="review-steps")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#review-actions", OptionList).focus()
        self.refresh_review()

    def on_screen_resume(self) -> None:
        self.refresh_review()

    def refresh_review(self) -> None:
        self.query_one("#review-plan", Static).update("computing the plan...")
        draft = self.draft
        self.run_worker(lambda: check_dataset(draft), thread=True, exclusive=True,
                        name="review-check")
        self._show_changes()
        self._recall_measured()

    def _recall_measured(self) -> None:
        """The time and memory measured for the answers as they are now, beside the plan:
        C's result in this review, else the one the engine remembers (looked up in a
        worker: it scans the dataset's file times); nothing for answers that are no profile."""
        measured = self.query_one("#review-measured", Static)
        measured.display = False  # until the engine answers (at once, without a key)
        self.measured_known = False
        try:
            profile = self.draft.profile()
        except LoraError:
            self._snapshot_text = None
            self.measured_known = True
            return
        path, text = calibration_snapshot(profile)
        self._snapshot_text = text
        if self._measured is not None and self._measured[0] == text:
            self._show_measured(text, self._measured[1])
            return
        self.run_worker(lambda: recall_calibration(path, text), thread=True, exclusive=True,
                        group="review-measured", name="review-measured")

    def _show_measured(self, text: str, result: dict | None) -> None:
        if text != self._snapshot_text:
            return  # measured or recalled for answers changed since
        if result is None and self._measured is not None and self._measured[0] == text:
            result = self._measured[1]
        measured = self.query_one("#review-measured", Static)
        if result is not None:
            measured.update(review_text(result))
        measured.display = result is not None
        self.measured_known = True

    def _show_changes(self) -> None:
        changes = self.query_one("#review-changes", Static)
        command = self.query_one("#review-command", Static)
        try:
            rows = self.draft.differences()
        except LoraError as exc:
            # The answers still show (an import with another machine's paths is refused
            # until they are fixed, and the review once hid what it had set).
            changes.update(f"[red]{escape(exc.message)}[/red]\n\n"
                           + typed_changes_text(self.draft))
            command.update("")
            return
        # A literal webhook URL holds its secret: the review shows its scheme and host only.
        rows = [(section, key, describe_webhook(value) if (section, key) == ("notify",
                 "webhook") else value, default) for section, key, value, default in rows]
        prompts = [p for p in self.draft.typed_prompts.splitlines() if p.strip()]
        if prompts:  # sample_prompts names the working copy until saved: said below instead
            rows = [row for row in rows if row[:2] != ("sample", "sample_prompts")]
        lines = ["[b]Changed from the defaults[/b]"]
        lines += [f"  {escape(f'[{section}] {key}')} = {escape(to_text(value) or '(empty)')}"
                  f"  [dim](default {escape(to_text(default) or 'unset')})[/dim]"
                  for section, key, value, default in rows]
        if prompts:
            name = prompts_file_name(self.draft.current("saving", "output_name"))
            lines.append(f"  {len(prompts)} typed sample prompt(s), written to "
                         f"{escape(name)} beside the profile when it is saved")
        lines += flux_files_lines(self.draft)
        changes.update("\n".join(lines))
        path = self.draft.source_path
        unsaved = self.query_one("#review-unsaved", Static)
        unsaved.display = path is not None and self.draft.dirty
        if path is not None and not self.draft.dirty:
            how = f"Enter trains from {escape(str(path))}"
        elif path is not None:
            copy = copy_path(self.draft.current("saving", "output_name"))
            unsaved.update(f"[yellow]Changed since opened:[/yellow] {escape(path.name)} stays "
                           "as it was unless you press S. Enter trains a copy in the state "
                           "folder (it asks first: save, or train the copy).")
            how = (f"Enter trains a copy, {escape(str(copy))}; S saves the answers to "
                   f"{escape(path.name)} (the command is for after saving)")
        else:
            how = "Enter trains the answers as they are now; S saves them to a profile"
        text = f"[b]Command[/b]\n  {escape(run_command(path))}\n  [dim]{how}[/dim]"
        board = self._tensorboard_command()
        if board:
            text += f"\n  curves: {escape(board)}"
        try:
            notify = destinations(self.draft.profile().notify)
        except LoraError:
            notify = []
        if notify:
            text += f"\n  when it ends, notifies: {escape('; '.join(notify))}"
        command.update(text)

    def _tensorboard_command(self) -> str:
        """``tensorboard --logdir ...`` when the run logs for TensorBoard."""
        if self.draft.current("logging", "log_with") not in ("tensorboard", "all"):
            return ""
        try:
            profile = self.draft.profile()
        except LoraError:
            return ""
        from lora_core.training.trackers import logging_dir

        return f"tensorboard --logdir {shlex.quote(str(logging_dir(profile)))}"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "review-measured" and event.state == WorkerState.SUCCESS:
            self._show_measured(*event.worker.result)
            return
        if event.worker.name != "review-check" or event.state != WorkerState.SUCCESS:
            return
        self.check = event.worker.result
        self.query_one("#review-plan", Static).update(plan_text(self.check,
                                                                self._sample_section()))

    def _sample_section(self) -> SampleSection | None:
        """The sample settings the run will have."""
        try:
            return self.draft.profile().sample
        except LoraError:
            return None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "review-actions":
            self.action_train() if event.option.id == "train" else self.action_save()
            return
        self.action_edit(int(event.option.id or 0))

    def action_back(self) -> None:
        """Back to the last step, which keeps the answers; from a review opened on its own
        (an opened or imported profile), Escape leaves the wizard and asks first when the
        answers changed, as Ctrl+G does (it dropped them without a word)."""
        from lora_tui.screens.step import StepScreen  # step.py imports this module

        stack = self.app.screen_stack
        below = stack[-2] if len(stack) > 1 else None
        if isinstance(below, StepScreen):
            self.app.pop_screen()
        else:
            self.app.action_home()  # type: ignore[attr-defined]

    def action_edit(self, index: int) -> None:
        self.app.open_step(index, from_review=True)  # type: ignore[attr-defined]

    def action_save(self) -> None:
        save_with_prompt(self, self.draft, ask=True, on_saved=lambda _: self._show_changes())

    def action_save_quick(self) -> None:
        save_with_prompt(self, self.draft, on_saved=lambda _: self._show_changes())

    def action_scroll_body(self, how: str) -> None:
        """Scroll the whole review; Home/End in the steps list also pick its first/last."""
        steps = self.query_one("#review-steps", OptionList)
        if self.focused is steps and how in ("home", "end"):
            steps.action_first() if how == "home" else steps.action_last()
        body = self.query_one(".step-body", VerticalScroll)
        {"page_down": body.scroll_page_down, "page_up": body.scroll_page_up,
         "end": body.scroll_end, "home": body.scroll_home}[how](animate=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "import_report":
            return bool(self.draft.import_report)
        return True

    def action_calibrate(self) -> None:
        """C: measure the run before it (a few real steps, nothing saved) and offer the
        settings that make it fit (``dialogs/calibrate.py``); a proposal taken is put into
        the answers, as if typed."""
        profile = self._runnable_profile()
        if profile is None:
            return
        path, text = calibration_snapshot(profile)
        try:
            atomic_write_bytes(path, text.encode("utf-8"))  # the user's file is not written
        except LoraError as exc:
            self.notify(f"{exc.message}\n{exc.hint}", severity="error", timeout=10)
            return
        dialog = CalibrateDialog(path)
        self.app.push_screen(dialog, lambda sets: self._calibrated(text, dialog.result, sets))

    def _calibrated(self, text: str, result: dict | None, sets: list[str] | None) -> None:
        """The dialog closed: its figures shown beside the plan; with a proposal taken,
        the answers it makes show that proposal's own brief measurement (C measures their
        whole run)."""
        if result is not None:
            self._measured = (text, result)
        if not sets:
            self._recall_measured()
            return
        self._take_proposal(sets)
        taken = next((p for p in (result or {}).get("proposals", []) if p["set"] == sets),
                     None)
        if taken is not None and self._snapshot_text is not None:
            self._measured = (self._snapshot_text, proposal_result(result, taken))
            self._show_measured(self._snapshot_text, None)

    def _take_proposal(self, sets: list[str] | None) -> None:
        if not sets:
            return
        for item in sets:
            name, _, value = item.partition("=")
            section, _, key = name.partition(".")
            self.draft.set_text(section, key, value)
        self.notify("took " + ", ".join(sets) + " (shown below, under the changes)")
        self.refresh_review()

    def action_import_report(self) -> None:
        if self.draft.import_report:
            self.app.push_screen(ImportReportDialog(self.draft.import_report))

    def _runnable_profile(self) -> Profile | None:
        """The answers as a profile the run takes, or None after saying what to fix."""
        try:
            profile = self.draft.profile()
        except LoraError as exc:
            self.notify(exc.message, severity="error", timeout=10)
            return None
        if self.check is not None and self.check.report is not None \
                and self.check.report.errors:
            self.notify("fix the problems the plan lists first", severity="error")
            return None
        return profile

    def action_train(self) -> None:
        profile = self._runnable_profile()
        if profile is None:
            return
        path = self.draft.source_path
        if path is not None and self.draft.dirty:
            # An opened profile, changed: its file stays as it was unless the user saves.
            self.app.push_screen(SaveFirstDialog(path, copy_path(profile.saving.output_name)),
                                 self._train_after_asking)
            return
        self._train(profile)

    def _train_after_asking(self, answer: str | None) -> None:
        app = self.app
        if answer == "save":
            save_with_prompt(self, self.draft,
                             on_saved=lambda path: app.start_training(path))  # type: ignore
        elif answer == "copy":
            self._train(self.draft.profile())

    def _train(self, profile: Profile) -> None:
        path = self.draft.source_path
        if path is None or self.draft.dirty:
            # Unsaved answers train from a snapshot in the state folder (absolute paths, so
            # it runs from anywhere); the user's own files are never written behind their back.
            path = copy_path(profile.saving.output_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_profile(profile, path)  # every path absolute; typed prompts: their working copy
        self.app.start_training(path)  # type: ignore[attr-defined]


def _listed(items: list[str]) -> str:
    if len(items) <= _LISTED:
        return ", ".join(items)
    return ", ".join(items[:_LISTED - 2]) + f", ... ({len(items) - _LISTED + 1} more), " \
        + items[-1]


def _buckets(counts: dict[tuple[int, int], int]) -> str:
    return _listed([f"{w}x{h}: {n}" for (w, h), n in counts.items()])


def _schedule_lines(plan: TrainingPlan, sample: SampleSection | None) -> list[str]:
    """When checkpoints and preview images happen, as the trainer's own checks say."""
    saves = [f"step {step} {name}" for step, name in plan.checkpoint_schedule()]
    saves.append(f"step {plan.max_train_steps} {plan.final_file_name}")
    lines = [f"  checkpoints: {escape(_listed(saves))}"]
    if sample is None:
        return lines
    if not sample.sample_prompts:
        lines.append("  samples: none (no prompt file or typed prompts)")
        return lines
    points = sample_points(sample, plan.max_train_steps, plan.steps_per_epoch, plan.num_epochs)
    if points:
        lines.append(f"  samples after step: {_listed([str(p) for p in points])}")
    else:
        lines.append("  samples: none (set sample every N epochs or steps)")
    return lines


def plan_text(check: DatasetCheck, sample: SampleSection | None = None) -> str:
    """The plan as the trainer computes it (lora_core's plan), as review text; ``sample``
    adds when preview images are made."""
    if check.report is None:
        hint = f"\n  [dim]{escape(check.hint)}[/dim]" if check.hint else ""
        return f"[b]Plan[/b]\n  [red]{escape(check.message or '')}[/red]{hint}"
    plan = check.report.plan
    lines = ["[b]Plan[/b]"]
    if plan is None:
        lines.append("  [red]no plan can be made[/red]")
    else:
        for subset in plan.subsets:
            held = len(subset.held_out)
            images, repeats = len(subset.scan.images) - held, subset.scan.repeats
            made = (f"{images} image{'s' * (images != 1)} x {repeats} "
                    f"repeat{'s' * (repeats != 1)}")
            if subset.is_reg:  # reg images are balanced against the train samples
                made += f", balanced to {subset.samples_per_epoch} samples per epoch"
            else:
                made += f" = {subset.samples_per_epoch} samples"
            if held:
                made += f" ({held} held out for validation)"
            lines.append(f"  {'reg/' if subset.is_reg else ''}{escape(subset.name)}: {made}")
        reg = (f", {plan.num_reg_samples} reg samples (balanced from {plan.num_reg_images})"
               if plan.num_reg_images else "")
        total = plan.batch_size * plan.num_processes * plan.gradient_accumulation_steps
        parts = [f"batch {plan.batch_size}"]
        if plan.num_processes > 1:
            parts.append(f"{plan.num_processes} processes")
        if plan.gradient_accumulation_steps > 1:
            parts.append(f"accumulation {plan.gradient_accumulation_steps}")
        shown = " x ".join(parts) + (f" = total batch {total}" if len(parts) > 1 else "")
        lines.append(f"  {plan.num_train_images} train samples per epoch{reg}; {shown}")
        if len(plan.datasets) > 1:
            for dataset in plan.datasets:
                lines.append(f"  buckets of dataset {dataset.index + 1} (batch "
                             f"{dataset.batch_size}): {_buckets(dataset.bucket_counts)}")
        else:
            lines.append(f"  buckets (size: samples): {_buckets(plan.bucket_counts)}")
        lines.append(f"  steps per epoch: {plan.steps_per_epoch}   epochs: {plan.num_epochs}   "
                     f"total steps: {plan.max_train_steps}   warmup steps: {plan.warmup_steps}")
        lines += _schedule_lines(plan, sample)
        if plan.validation_batches:
            names = [escape(f"{r.path.parent.name}/{r.path.name}") for r in plan.held_out]
            lines.append(f"  validation loss on {len(names)} held-out image"
                         f"{'s' * (len(names) != 1)} (never trained on): {_listed(names)}")
    lines += [f"  [red]problem:[/red] {escape(p.text())}" for p in check.report.errors]
    lines += [f"  [yellow]note:[/yellow] {escape(p.text())}" for p in check.report.warnings]
    return "\n".join(lines)
