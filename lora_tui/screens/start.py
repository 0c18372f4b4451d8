"""The first screen: new profile, open a saved profile, rerun the last run, queue, quit.

Keys: N new, O open, R rerun last (trains again at once), E rerun last with changes (opens
it in the wizard), U the queue, Q quit. Arrow keys and Enter work on the list too.

"The last run" is ``last_run.json`` in the state folder, written by ``lora-train run`` (so
also by runs this app did not start). Its ``profile`` is the run folder's resolved copy
(absolute paths, ``--set`` overrides applied): rerunning it repeats exactly what ran, from
any working directory, like ``lora-train rerun-last``.
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from lora_core.errors import LoraError
from lora_core.saving.runs import last_run
from lora_tui.dialogs.path_prompt import PathPrompt

CHOICES = (
    ("new", "N  New profile: answer the questions step by step"),
    ("open", "O  Open a saved profile (.toml)"),
    ("rerun", "R  Rerun the last run"),
    ("rerun_edit", "E  Rerun the last run with changes"),
    ("queue", "U  Queue: run several saved profiles one after another"),
    ("quit", "Q  Quit"),
)


class StartScreen(Screen):
    BINDINGS = [
        Binding("n", "choose('new')", "New"),
        Binding("o", "choose('open')", "Open"),
        Binding("r", "choose('rerun')", "Rerun last"),
        Binding("e", "choose('rerun_edit')", "Rerun with changes"),
        Binding("u", "choose('queue')", "Queue"),
        Binding("q", "choose('quit')", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("[b]lora-tui[/b]: train a LoRA for Stable Diffusion", classes="step-title")
        yield OptionList(*[Option(text, id=key) for key, text in CHOICES], id="start-menu")
        yield Static("", id="start-message")
        yield Footer()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_choose(event.option.id or "")

    def show_error(self, exc: LoraError) -> None:
        text = f"[red]{escape(exc.message)}[/red]"
        if exc.hint:
            text += f"\n[dim]{escape(exc.hint)}[/dim]"
        self.query_one("#start-message", Static).update(text)

    def action_choose(self, choice: str) -> None:
        app = self.app
        if choice == "new":
            app.new_profile()  # type: ignore[attr-defined]
        elif choice == "open":
            app.push_screen(PathPrompt("Profile to open (.toml):", base_dir=Path.cwd()),
                            self._open)
        elif choice in ("rerun", "rerun_edit"):
            try:
                record = last_run()
            except LoraError as exc:
                self.show_error(exc)
                return
            profile_path = Path(record["profile"])
            if choice == "rerun":
                app.start_training(profile_path)  # type: ignore[attr-defined]
            else:
                self._open(profile_path, detach=True)
        elif choice == "queue":
            app.open_queue()  # type: ignore[attr-defined]
        elif choice == "quit":
            app.exit()

    def _open(self, path: Path | None, detach: bool = False) -> None:
        if path is None:
            return
        try:
            self.app.open_profile(path, detach=detach)  # type: ignore[attr-defined]
        except LoraError as exc:
            self.show_error(exc)
