"""The review: the plan exactly as the trainer will run it, the answers that differ from the
defaults, the equivalent ``lora-train`` command, and Save / Train.

Keys: 1-6 reopen a step (its Next comes back here), S saves the profile (TOML), T trains,
Escape goes back to the last step.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

from lora_core.errors import LoraError
from lora_core.paths import state_dir
from lora_core.profile_io import absolute_profile, save_profile
from lora_tui.dataset_check import DatasetCheck, check_dataset
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.draft import Draft, to_text
from lora_tui.steps import STEPS


def save_draft(draft: Draft, path: Path) -> Path:
    """Write the draft's profile to ``path``. Relative paths stay relative only when the file
    goes to the folder they are relative to; elsewhere they are made absolute."""
    profile = draft.profile()
    path = Path(path)
    if path.parent.resolve() != Path(draft.base_dir).resolve():
        profile = absolute_profile(profile)
    save_profile(profile, path)
    draft.source_path, draft.base_dir, draft.dirty = path, path.resolve().parent, False
    return path


def run_command(profile_path: Path | None) -> str:
    shown = shlex.quote(str(profile_path)) if profile_path else "PROFILE.toml"
    return f"lora-train run {shown}"


class ReviewScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "save", "Save"),
        Binding("t", "train", "Train"),
        *[Binding(str(i + 1), f"edit({i})", step.title, show=False)
          for i, step in enumerate(STEPS)],
    ]

    def __init__(self) -> None:
        super().__init__(classes="review-screen")
        self.check: DatasetCheck | None = None

    @property
    def draft(self) -> Draft:
        return self.app.draft  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Static("[b]Review[/b]  [dim]S save · T train · 1-6 change a step[/dim]",
                     classes="step-title")
        with VerticalScroll(classes="step-body"):
            yield Static("computing the plan...", id="review-plan")
            yield Static("", id="review-changes")
            yield Static("", id="review-command")
            yield Static("\n".join(f"  [b]{i + 1}[/b] {escape(s.title)}"
                                   for i, s in enumerate(STEPS)), id="review-steps")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_review()

    def on_screen_resume(self) -> None:
        self.refresh_review()

    def refresh_review(self) -> None:
        self.query_one("#review-plan", Static).update("computing the plan...")
        draft = self.draft
        self.run_worker(lambda: check_dataset(draft), thread=True, exclusive=True,
                        name="review-check")
        self._show_changes()

    def _show_changes(self) -> None:
        changes = self.query_one("#review-changes", Static)
        command = self.query_one("#review-command", Static)
        try:
            rows = self.draft.differences()
        except LoraError as exc:
            changes.update(f"[red]{escape(exc.message)}[/red]")
            command.update("")
            return
        lines = ["[b]Changed from the defaults[/b]"]
        lines += [f"  {escape(f'[{section}] {key}')} = {escape(to_text(value) or '(empty)')}"
                  f"  [dim](default {escape(to_text(default) or 'unset')})[/dim]"
                  for section, key, value, default in rows]
        changes.update("\n".join(lines))
        path = self.draft.source_path
        note = "" if path and not self.draft.dirty else "  [dim](after saving with S)[/dim]"
        command.update(f"[b]Command[/b]\n  {escape(run_command(path))}{note}")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "review-check" or event.state != WorkerState.SUCCESS:
            return
        self.check = event.worker.result
        self.query_one("#review-plan", Static).update(plan_text(self.check))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_edit(self, index: int) -> None:
        self.app.open_step(index, from_review=True)  # type: ignore[attr-defined]

    def action_save(self) -> None:
        draft = self.draft
        name = draft.text("saving", "output_name") or "lora"
        default = draft.source_path or Path.cwd() / f"{name}.toml"
        self.app.push_screen(PathPrompt("Save the profile as:", str(default), Path.cwd()),
                             self._save_to)

    def _save_to(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            save_draft(self.draft, path)
        except LoraError as exc:
            self.notify(f"{exc.message}\n{exc.hint}", severity="error", timeout=10)
            return
        self.notify(f"saved {path}")
        self._show_changes()

    def action_train(self) -> None:
        try:
            profile = self.draft.profile()
        except LoraError as exc:
            self.notify(exc.message, severity="error", timeout=10)
            return
        if self.check is not None and self.check.preflight is not None \
                and self.check.preflight.problems:
            self.notify("fix the problems the plan lists first", severity="error")
            return
        path = self.draft.source_path
        if path is None or self.draft.dirty:
            # Unsaved answers train from a snapshot in the state folder (absolute paths, so
            # it runs from anywhere); the user's own files are never written behind their back.
            path = state_dir() / "wizard" / f"{profile.saving.output_name}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_profile(absolute_profile(profile), path)
        self.app.start_training(path)  # type: ignore[attr-defined]


def plan_text(check: DatasetCheck) -> str:
    """The plan as the trainer computes it (lora_core's plan), as review text."""
    if check.preflight is None:
        hint = f"\n  [dim]{escape(check.hint)}[/dim]" if check.hint else ""
        return f"[b]Plan[/b]\n  [red]{escape(check.message or '')}[/red]{hint}"
    plan = check.preflight.plan
    lines = ["[b]Plan[/b]"]
    if plan is None:
        lines.append("  [red]no plan can be made[/red]")
    else:
        for subset in plan.subsets:
            lines.append(f"  {'reg/' if subset.is_reg else ''}{escape(subset.name)}: "
                         f"{len(subset.scan.images)} images x {subset.scan.repeats} repeats = "
                         f"{subset.samples_per_epoch} samples")
        reg = (f", {plan.num_reg_samples} reg samples" if plan.num_reg_images else "")
        lines += [
            f"  {plan.num_train_images} train samples per epoch{reg}; "
            f"{len(plan.bucket_counts)} bucket(s), batch {plan.batch_size}",
            f"  steps per epoch: {plan.steps_per_epoch}   epochs: {plan.num_epochs}   "
            f"total steps: {plan.max_train_steps}   warmup steps: {plan.warmup_steps}",
        ]
        files = [name for _, name in plan.checkpoint_schedule()] + [plan.final_file_name]
        lines.append(f"  checkpoints: {escape(', '.join(files))}")
    lines += [f"  [red]problem:[/red] {escape(p)}" for p in check.preflight.problems]
    lines += [f"  [yellow]note:[/yellow] {escape(a)}" for a in check.preflight.advisories]
    return "\n".join(lines)
