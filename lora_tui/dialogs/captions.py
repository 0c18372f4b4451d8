"""Captions of the training images (Ctrl+T on the images step): the tag table, tagging the
pictures without a caption with a WD14 tagger, the trigger first in every caption, undo.

Tagging runs ``lora-train caption`` in a child process (onnxruntime stays out of the app):
Enter in the model field previews the first three pictures (nothing written), Ctrl+T tags
every picture without a caption with a progress bar; Escape during a run cancels it between
batches (the finished captions are kept, none is half-written). The table and the trigger
edit read and write caption files here (``lora_core.captioning``), undo included.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, ProgressBar, Static

from lora_core.captioning.files import UNDO, caption_path, images_in
from lora_core.captioning.tags import TagEdit, edit_tags, tag_table
from lora_core.errors import LoraError
from lora_tui.widgets.path_input import PathInput

TABLE_ROWS = 200
_PROGRESS = re.compile(r"tagged (\d+)/(\d+)")


class CaptionsDialog(ModalScreen[bool]):
    """Dismisses with True when captions changed (the step checks the dataset again)."""

    BINDINGS = [Binding("escape", "close", "Close / cancel"),
                Binding("ctrl+t", "tag_all", "Tag all missing"),
                Binding("ctrl+f", "trigger_first", "Trigger first"),
                Binding("ctrl+z", "undo", "Undo")]

    def __init__(self, folder: Path, extension: str, trigger: str) -> None:
        super().__init__(classes="dialog")
        self.folder = folder
        self.extension = extension
        self.trigger = trigger
        self.changed = False
        self.process: asyncio.subprocess.Process | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box captions-box"):
            yield Static(f"[b]Captions[/b] of {escape(str(self.folder))}", id="captions-title")
            yield Static("[dim]Enter (tagger): preview 3 · Ctrl+T tag all without a caption · "
                         "Ctrl+F trigger first in every caption · Ctrl+Z undo · Esc close"
                         "[/dim]")
            yield Static("", id="captions-summary")
            with Horizontal(classes="edit-row"):
                yield Static("tagger", classes="edit-label")
                yield PathInput("", Path.cwd(), id="captions-model", compact=True,
                                placeholder="folder with model.onnx + selected_tags.csv")
            with Horizontal(classes="edit-row"):
                yield Static("trigger", classes="edit-label")
                yield Input(self.trigger, id="captions-trigger", compact=True)
            yield ProgressBar(id="captions-progress", show_eta=False)
            yield Static("", id="captions-output")
            yield DataTable(id="captions-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#captions-progress", ProgressBar).display = False
        self.refresh_table()
        self.query_one("#captions-model", Input).focus()

    def refresh_table(self) -> None:
        table = self.query_one("#captions-table", DataTable)
        table.clear(columns=True)
        table.add_columns("captions", "tag")
        try:
            rows = tag_table(self.folder, self.extension)
        except LoraError as exc:
            self.say(f"[red]{escape(exc.message)}[/red]")
            return
        for tag, count in rows[:TABLE_ROWS]:
            table.add_row(str(count), tag)
        missing = sum(1 for image in images_in(self.folder)
                      if not caption_path(image, self.extension).exists())
        self.query_one("#captions-summary", Static).update(
            f"{missing} picture(s) without a caption · {len(rows)} different tags "
            "(most used first)")

    def say(self, text: str) -> None:
        self.query_one("#captions-output", Static).update(text)

    @property
    def model(self) -> str:
        return self.query_one("#captions-model", Input).value.strip()

    @property
    def trigger_words(self) -> str:
        return self.query_one("#captions-trigger", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "captions-model":
            self.start_tagging(preview=True)

    def action_tag_all(self) -> None:
        self.start_tagging(preview=False)

    def start_tagging(self, preview: bool) -> None:
        if self.process is not None:
            return
        if not self.model:
            self.say("[red]give the tagger's folder first[/red]")
            return
        args = [sys.executable, "-m", "lora_core.cli", "caption", str(self.folder),
                "--tagger", self.model, "--caption-extension", self.extension]
        if self.trigger_words:
            args += ["--prefix", self.trigger_words]
        if preview:
            args += ["--dry-run", "--limit", "3"]
        self.run_tagger(args, preview)

    @work(exclusive=True, group="tagger")
    async def run_tagger(self, args: list[str], preview: bool) -> None:
        bar = self.query_one("#captions-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = not preview
        self.say("previewing the first 3 pictures..." if preview else "tagging...")
        self.process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        errors: list[str] = []
        assert self.process.stderr is not None and self.process.stdout is not None
        while line := (await self.process.stderr.readline()).decode(errors="replace"):
            found = _PROGRESS.search(line)
            if found:
                bar.update(total=int(found[2]), progress=int(found[1]))
            else:
                errors.append(line.rstrip())
        out = (await self.process.stdout.read()).decode(errors="replace")
        code = await self.process.wait()
        self.process = None
        bar.display = False
        if code not in (0, 130):
            self.say(f"[red]{escape(chr(10).join(errors[-4:]))}[/red]")
            return
        lines = out.strip().splitlines()
        if not preview:
            self.changed = True
            self.refresh_table()
        stopped = "\n[yellow]cancelled: the finished captions are kept[/yellow]" \
            if code == 130 else ""
        shown = "\n".join(escape(line.replace("undo with --undo", "Ctrl+Z undoes"))
                          for line in lines[-4:])
        self.say(("[b]Preview[/b] (nothing written; Ctrl+T tags all)\n" if preview else "")
                 + shown + stopped)

    def action_trigger_first(self) -> None:
        trigger = self.trigger_words
        if not trigger:
            self.say("[red]type the trigger words first[/red]")
            return
        try:
            changes, missing = edit_tags(self.folder, TagEdit(add=[trigger], first=True),
                                         self.extension)
        except LoraError as exc:
            self.say(f"[red]{escape(exc.message)}[/red]")
            return
        self.changed = self.changed or bool(changes)
        self.say(f"\"{escape(trigger)}\" is first in {len(changes)} more caption(s)"
                 + (f"; {missing} picture(s) have none yet" if missing else "")
                 + " (Ctrl+Z undoes)")
        self.refresh_table()

    def action_undo(self) -> None:
        if self.process is not None:
            return
        try:
            command, restored, skipped = UNDO.undo(self.folder)
        except LoraError as exc:
            self.say(f"[red]{escape(exc.message)}[/red]")
            return
        self.changed = True
        self.say(f"undid the last {command}: {restored} caption file(s) put back"
                 + (f"; {len(skipped)} changed since were left alone" if skipped else ""))
        self.refresh_table()

    def action_close(self) -> None:
        if self.process is not None:  # cancel: the child stops between batches and saves
            self.process.send_signal(signal.SIGINT)
            self.say("cancelling after the current batch...")
            return
        self.dismiss(self.changed)
