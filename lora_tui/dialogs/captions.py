"""Captions of the training images (Ctrl+T on the images step): the tag table, captioning
the pictures without a caption with a WD14 tagger (tags) or a vision-language captioner
(sentences, for families whose text encoder reads prose), the trigger first in every
caption, undo.

Ctrl+O switches between tagger and captioner (not Ctrl+K: the input's own, delete to the
end); a model folder says which it is by what it holds (``model.onnx``: a tagger;
``config.json``: a captioner), so giving the folder is enough. The prompt row is shown only
for a captioner (empty: the model's default, ``<DETAILED_CAPTION>`` for Florence-2).

Captioning runs ``lora-train caption --events -`` in a child process (onnxruntime, torch and
transformers stay out of the app), read as typed events (``ImagesTagged``,
``CaptionsTagged``, ``CommandFailed``): Enter in the model field previews the first three
pictures (nothing written), Ctrl+T captions every picture without a caption with a progress
bar; Escape during a run cancels it between batches (the finished captions are kept, none is
half-written). The table and the trigger edit read and write caption files here
(``lora_core.captioning``), undo included.
"""

from __future__ import annotations

import asyncio
import signal
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
from lora_core.events import CaptionsTagged, Event, ImagesTagged
from lora_tui.tool_process import follow_tool, start_tool, tool_command
from lora_tui.widgets.ordered_keys import OrderedInput, focus_now
from lora_tui.widgets.path_input import PathInput

TABLE_ROWS = 200
KINDS = ("tagger", "captioner")
PLACEHOLDERS = {"tagger": "folder with model.onnx + selected_tags.csv",
                "captioner": "transformers folder (Florence-2, BLIP, GIT, LLaVA) or cached id"}


def model_kind(model: str) -> str | None:
    """What a model folder holds: 'tagger' (model.onnx), 'captioner' (config.json), or
    None (not a folder, or neither: the switch decides)."""
    folder = Path(model).expanduser()
    if (folder / "model.onnx").is_file():
        return "tagger"
    if (folder / "config.json").is_file():
        return "captioner"
    return None


class CaptionsDialog(ModalScreen[bool]):
    """Dismisses with True when captions changed (the step checks the dataset again)."""

    BINDINGS = [Binding("escape", "close", "Close / cancel"),
                Binding("ctrl+t", "tag_all", "Caption all missing"),
                Binding("ctrl+o", "switch_kind", "Tagger / captioner"),
                Binding("ctrl+f", "trigger_first", "Trigger first"),
                Binding("ctrl+z", "undo", "Undo")]

    def __init__(self, folder: Path, extension: str, trigger: str) -> None:
        super().__init__(classes="dialog")
        self.folder = folder
        self.extension = extension
        self.trigger = trigger
        self.changed = False
        self.process: asyncio.subprocess.Process | None = None
        self.kind = "tagger"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box captions-box"):
            yield Static(f"[b]Captions[/b] of {escape(str(self.folder))}", id="captions-title")
            yield Static("[dim]Enter (model): preview 3 · Ctrl+T caption all without one · "
                         "Ctrl+O tagger/captioner · Ctrl+F trigger first · Ctrl+Z undo · "
                         "Esc close[/dim]")
            yield Static("", id="captions-summary")
            with Horizontal(classes="edit-row"):
                yield Static("tagger", classes="edit-label", id="captions-kind")
                yield PathInput("", Path.cwd(), id="captions-model", compact=True,
                                folders_only=True,  # either model is a folder
                                placeholder=PLACEHOLDERS["tagger"])
            with Horizontal(classes="edit-row", id="captions-prompt-row"):
                yield Static("prompt", classes="edit-label")
                yield OrderedInput("", id="captions-prompt", compact=True,
                                   placeholder="empty: the model's default (Florence-2: "
                                   "<DETAILED_CAPTION>)")
            with Horizontal(classes="edit-row"):
                yield Static("trigger", classes="edit-label")
                yield OrderedInput(self.trigger, id="captions-trigger", compact=True)
            yield ProgressBar(id="captions-progress", show_eta=False)
            yield Static("", id="captions-output")
            yield DataTable(id="captions-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#captions-progress", ProgressBar).display = False
        self.show_kind()
        self.refresh_table()
        model = self.query_one("#captions-model", PathInput)
        model.submit = lambda: self.start_tagging(preview=True)  # as Enter is read
        focus_now(model)  # keys typed with Ctrl+T wait for it (widgets/ordered_keys.py)

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

    def show_kind(self) -> None:
        self.query_one("#captions-kind", Static).update(self.kind)
        self.query_one("#captions-model", Input).placeholder = PLACEHOLDERS[self.kind]
        self.query_one("#captions-prompt-row").display = self.kind == "captioner"

    def action_switch_kind(self) -> None:
        if self.process is None:
            self.kind = KINDS[1 - KINDS.index(self.kind)]
            self.show_kind()

    def say(self, text: str) -> None:
        self.query_one("#captions-output", Static).update(text)

    @property
    def model(self) -> str:
        return self.query_one("#captions-model", Input).value.strip()

    @property
    def prompt(self) -> str:
        return self.query_one("#captions-prompt", Input).value.strip()

    @property
    def trigger_words(self) -> str:
        return self.query_one("#captions-trigger", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id in ("captions-model", "captions-prompt"):
            self.start_tagging(preview=True)

    def action_tag_all(self) -> None:
        self.start_tagging(preview=False)

    def start_tagging(self, preview: bool) -> None:
        if self.process is not None:
            return
        if not self.model:
            self.say(f"[red]give the {self.kind}'s folder first[/red]")
            return
        found = model_kind(self.model)
        if found is not None and found != self.kind:
            self.kind = found
            self.show_kind()
        args = [str(self.folder), f"--{self.kind}", self.model, "--caption-extension",
                self.extension]
        if self.kind == "captioner" and self.prompt:
            args += ["--prompt", self.prompt]
        if self.trigger_words:
            args += ["--prefix", self.trigger_words]
        if preview:
            args += ["--dry-run", "--limit", "3"]
        self.run_tagger(tool_command("caption", *args), preview)

    @work(exclusive=True, group="tagger")
    async def run_tagger(self, args: list[str], preview: bool) -> None:
        bar = self.query_one("#captions-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = not preview
        self.say("previewing the first 3 pictures (loading the model)..." if preview
                 else "captioning...")
        self.process = await start_tool(args)

        def progressed(event: Event) -> None:
            if isinstance(event, ImagesTagged):
                bar.update(total=event.total, progress=event.done)

        outcome = await follow_tool(self.process, progressed)
        self.process = None
        bar.display = False
        tagged = outcome.last(CaptionsTagged)
        if not isinstance(tagged, CaptionsTagged):
            self.say(f"[red]{escape(outcome.failure)}[/red]")
            return
        if not preview:
            self.changed = True
            self.refresh_table()
        self.say(self._tagged_text(tagged))

    @staticmethod
    def _tagged_text(tagged: CaptionsTagged, shown: int = 3) -> str:
        """The last captions, what was written, and what a cancel left."""
        count = len(tagged.paths)
        lines = [f"{escape(Path(path).name)}: {escape(caption)}"
                 for path, caption in zip(tagged.paths[-shown:], tagged.captions[-shown:],
                                          strict=True)]
        if tagged.dry_run:
            return "\n".join(["[b]Preview[/b] (nothing written; Ctrl+T captions all)", *lines])
        lines.append(f"wrote {count} caption file(s)" + ("; Ctrl+Z undoes" if count else ""))
        if tagged.stopped:
            lines.append("[yellow]cancelled: the finished captions are kept[/yellow]")
        return "\n".join(lines)

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
