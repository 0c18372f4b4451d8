"""The first screen: new profile, open a saved profile, rerun the last run, queue, quit;
and the recent runs, to follow or continue.

Keys: N new, S new by the short path (base model, training images, output, then the review
with the defaults, every other step one key away there), O open, R rerun last (trains again
at once), E rerun last with changes (opens it in the wizard), U the queue, F the Files
screen (LoRA tools), Q quit. Arrow keys and Enter work on the list too.

Below the menu, the runs on this machine (``list_runs``), running ones first: A (or Enter
on the list) attaches to the selected run (its events replayed, then followed live; S
there stops it), C continues a stopped, failed or crashed run from its saved state
(``lora-train resume``). A crashed or failed run shows its message and log tail when
selected. The list is read again when the screen comes back and, while a run is going,
every few seconds.

"The last run" is ``last_run.json`` in the state folder, written by ``lora-train run`` (so
also by runs this app did not start). R trains the profile the user chose for it (its
``source_profile``), as it is now, when that file still exists, else the run folder's
resolved copy (absolute paths, ``--set`` overrides applied); either way it says which. E
opens the same file on the review, every step one key away.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, OptionList, Static
from textual.widgets.option_list import Option

from lora_core.errors import LoraError
from lora_core.runs.folders import last_run
from lora_core.runs.status import RunStatus, list_runs
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.widgets.run_list import RunList, run_detail

CHOICES = (
    ("new", "N  New profile: answer the questions step by step"),
    ("short", "S  Short new profile: model, images, output; then the review"),
    ("open", "O  Open a saved profile, or import settings (sd-scripts, LETS, kohya_ss)"),
    ("rerun", "R  Rerun the last run"),
    ("rerun_edit", "E  Rerun the last run with changes"),
    ("queue", "U  Queue: run several saved profiles one after another"),
    ("files", "F  Files: look at a LoRA, edit its info, resize it"),
    ("quit", "Q  Quit"),
)
RECENT_RUNS = 8
_REFRESH_S = 2.0  # while a listed run is going, its step count is read again this often
_AGE_REFRESH_S = 30.0  # and the list again this often regardless (the ages change)


class StartScreen(Screen):
    BINDINGS = [
        Binding("n", "choose('new')", "New"),
        Binding("s", "choose('short')", "Short new", show=False),
        Binding("o", "choose('open')", "Open"),
        Binding("r", "choose('rerun')", "Rerun last"),
        Binding("e", "choose('rerun_edit')", "Rerun with changes"),
        Binding("u", "choose('queue')", "Queue"),
        Binding("f", "choose('files')", "Files"),
        Binding("q", "choose('quit')", "Quit"),
        Binding("a", "attach", "Attach run"),
        Binding("c", "resume", "Continue run"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="start-screen")
        self._refreshed_at = 0.0

    @property
    def run_list(self) -> RunList:
        return self.query_one("#start-runs", RunList)

    @property
    def selected_run(self) -> RunStatus | None:
        try:
            return self.run_list.selected
        except NoMatches:  # bindings are checked before the list is mounted
            return None

    def compose(self) -> ComposeResult:
        yield Static("[b]lora-tui[/b]: train a LoRA for Stable Diffusion or Flux.1",
                     classes="step-title")
        yield OptionList(*[Option(text, id=key) for key, text in CHOICES], id="start-menu")
        yield Static("", id="start-message")
        yield Static("[b]Recent runs[/b]  [dim]A attach · C continue · Tab to the list[/dim]",
                     id="start-runs-title")
        yield RunList(id="start-runs")
        yield Static("", id="start-run-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_runs()
        self.set_interval(_REFRESH_S, self._refresh_while_running)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def refresh_runs(self) -> None:
        self._refreshed_at = time.monotonic()
        runs = list_runs(limit=RECENT_RUNS)
        self.run_list.show_runs(runs)
        for widget in (self.run_list, self.query_one("#start-runs-title")):
            widget.display = bool(runs)
        self._show_run_detail()
        self.refresh_bindings()

    def _refresh_while_running(self) -> None:
        """Every few seconds while a run goes on (its step count), and every half minute
        anyway, so the age column keeps telling the truth."""
        if not self.is_current:
            return
        stale = time.monotonic() - self._refreshed_at > _AGE_REFRESH_S
        if stale or any(run.active for run in self.run_list.runs):
            self.refresh_runs()

    def _show_run_detail(self) -> None:
        run = self.selected_run
        self.query_one("#start-run-detail", Static).update(
            run_detail(run) if run is not None else "")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_run_detail()
        self.refresh_bindings()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_attach()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "attach":
            return self.selected_run is not None
        if action == "resume":  # on any listed run; one that cannot continue says why
            return self.selected_run is not None
        return True

    def action_attach(self) -> None:
        run = self.selected_run
        if run is not None:
            self.app.attach_run(run.path)  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        run = self.selected_run
        if run is None:
            return
        if not run.resumable:
            why = {"finished": "it finished: there is nothing left to train",
                   "running": "it is still running (A follows it)",
                   "starting": "it is still starting (A follows it)",
                   "stopping": "it is stopping (A follows it)"}.get(
                run.status, "it saved no training state to continue from")
            self.notify(f"{run.output_name} cannot be continued: {why}", severity="warning")
            return
        self.app.resume_run(run.path)  # type: ignore[attr-defined]

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_choose(event.option.id or "")

    def show_error(self, exc: LoraError) -> None:
        text = f"[red]{escape(exc.message)}[/red]"
        if exc.hint:
            text += f"\n[dim]{escape(exc.hint)}[/dim]"
        self.query_one("#start-message", Static).update(text)

    def action_choose(self, choice: str) -> None:
        app = self.app
        if choice in ("new", "short"):
            app.new_profile(short=choice == "short")  # type: ignore[attr-defined]
        elif choice == "open":
            app.push_screen(PathPrompt("Profile to open (.toml), or settings to import: an "
                                       "sd-scripts command (paste it) or TOML, a LETS or "
                                       "kohya_ss file, a LoRA:", base_dir=Path.cwd(),
                                       commands=True), self._open)
        elif choice in ("rerun", "rerun_edit"):
            try:
                record = last_run()
            except LoraError as exc:
                self.show_error(exc)
                return
            # The profile the user chose, as it is now, when it still exists; else the run
            # folder's record of what ran (never overwritten: opened detached).
            source = record.get("source_profile")
            chosen = Path(source) if source and Path(source).is_file() else None
            profile_path = chosen or Path(record["profile"])
            if choice == "rerun":
                self.notify(f"rerunning {profile_path}"
                            + ("" if chosen else " (the last run's own copy: the profile it "
                               "was started from is gone)"))
                app.start_training(profile_path)  # type: ignore[attr-defined]
            else:
                self._open(profile_path, detach=chosen is None)
        elif choice == "queue":
            app.open_queue()  # type: ignore[attr-defined]
        elif choice == "files":
            from lora_tui.screens.files import FilesScreen  # read on demand: startup stays lean

            app.push_screen(FilesScreen())
        elif choice == "quit":
            app.quit_app()  # type: ignore[attr-defined]

    def _open(self, path: Path | str | None, detach: bool = False) -> None:
        if path is None:
            return
        try:
            self.app.open_profile(path, detach=detach)  # type: ignore[attr-defined]
        except LoraError as exc:
            self.show_error(exc)
