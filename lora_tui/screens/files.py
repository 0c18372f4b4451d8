"""The Files screen (F on the start screen): look at a LoRA file, edit its user fields,
resize it.

The list holds the final files of the recent runs that still exist, then "pick another
file". Choosing one shows what ``lora-train inspect`` shows: family, network, ranks, how it
was trained and, in a table, its tags per folder, most used first. E edits the title,
description, author, keywords, tags and cover (the original kept as ``FILE.backup``); Z
resizes it to a smaller rank into a new file beside it. Inspect and edit read and rewrite the
header only, in this process (no torch); a resize loads tensors, so it runs as
``lora-train resize --events -`` in a child process, read as typed events, and the screen
stays live.
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from lora_core.errors import LoraError
from lora_core.events import LoraFactored
from lora_core.lora_tools.edit import edit_lora
from lora_core.lora_tools.inspect import USER_FIELDS, inspect_lora, render_inspect
from lora_core.runs.status import RunStatus, list_runs
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.path_text import fit_text, shorten_path
from lora_tui.tool_process import follow_tool, start_tool, tool_command
from lora_tui.widgets.ordered_keys import OrderedInput
from lora_tui.widgets.path_input import PathInput

PICK = "__pick__"
RECENT_FILES = 8
TEXT_FIELDS = [name for name in USER_FIELDS if name != "cover"]


def recent_loras(limit: int = RECENT_FILES) -> list[Path]:
    """The final files of the recent runs that are still on disk, newest first, each
    followed by its run's best file (lowest validation loss) when it has one."""
    found = []
    for run in list_runs(limit=limit * 2):
        for name in (run.final_file, run.best_file):
            path = Path(name) if name else None
            if path is not None and path.suffix == ".safetensors" and path.is_file() \
                    and path not in found:
                found.append(path)
    return found[:limit]


def run_of(path: Path) -> RunStatus | None:
    """The recent run whose final or best file ``path`` is (for its grid and best file)."""
    for run in list_runs(limit=RECENT_FILES * 2):
        if str(path) in (run.final_file, run.best_file):
            return run
    return None


def resized_name(path: Path, rank: int) -> Path:
    """``NAME-rN.safetensors`` beside ``path`` (``-rN-2`` ... when taken)."""
    candidate = path.with_name(f"{path.stem}-r{rank}.safetensors")
    number = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-r{rank}-{number}.safetensors")
        number += 1
    return candidate


class FilesScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("p", "pick", "Pick file"),
        Binding("e", "edit", "Edit info"),
        Binding("z", "resize", "Resize"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="files-screen")
        self.path: Path | None = None
        self.report: dict | None = None
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Static("[b]Files[/b]: look at a LoRA, edit its info, resize it",
                     classes="step-title")
        yield OptionList(id="files-list")
        yield Static("", id="files-message")
        with VerticalScroll(id="files-view"):
            yield Static("", id="files-info")
            yield Static("", id="files-run")
            yield Static("", id="files-grid")
            yield DataTable(id="files-tags", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.fill_list()
        self.query_one("#files-tags", DataTable).display = False
        self.query_one("#files-grid", Static).display = False

    def fill_list(self) -> None:
        menu = self.query_one("#files-list", OptionList)
        menu.clear_options()
        width = max(20, self.app.size.width - 10)  # inside the list's margins and border
        for path in recent_loras():
            menu.add_option(Option(escape(shorten_path(str(path), width)), id=str(path)))
        menu.add_option(Option("P  Pick another file...", id=PICK))
        menu.highlighted = 0  # Enter opens the first at once (nothing was selected)
        menu.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("edit", "resize"):
            return self.path is not None and not self.busy
        return True

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == PICK:
            self.action_pick()
        elif event.option.id:
            self.show_file(Path(event.option.id))

    def action_pick(self) -> None:
        self.app.push_screen(PathPrompt("LoRA file (.safetensors):", base_dir=Path.cwd()),
                             lambda path: self.show_file(path) if path else None)

    def say(self, text: str, error: bool = False) -> None:
        self.query_one("#files-message", Static).update(
            f"[red]{text}[/red]" if error else text)

    def show_file(self, path: Path) -> None:
        """Inspect ``path``; a file that is not a LoRA says why and keeps the last view."""
        try:
            report = inspect_lora(path)
        except LoraError as exc:
            self.say(escape(exc.message) + (f"\n[dim]{escape(exc.hint)}[/dim]"
                                             if exc.hint else ""), error=True)
            return
        self.path, self.report = Path(path), report
        self.say("")
        # A line ending in a path keeps the file name whole (the folder shortened).
        width = max(20, self.query_one("#files-view").size.width - 2 or self.app.size.width - 6)
        lines = render_inspect({**report, "tag_frequency": {}}).splitlines()
        self.query_one("#files-info", Static).update(escape("\n".join(
            fitted for line in lines for fitted in fit_text(line, width))))
        self.show_run(run_of(Path(path)), width)
        table = self.query_one("#files-tags", DataTable)
        table.clear(columns=True)
        table.add_columns("count", "tag", "folder")
        for folder, tags in report["tag_frequency"].items():
            for tag, count in tags:
                table.add_row(str(count), tag, folder)
        table.display = bool(report["tag_frequency"])
        self.refresh_bindings()

    def show_run(self, run: RunStatus | None, width: int) -> None:
        """Of a run's file: its best file (with the loss) and its sample grid, drawn."""
        lines = []
        if run is not None and run.best_file:
            lines.append(f"best by validation loss ({run.best_validation_loss:.4f}): "
                         f"{run.best_file}")
        grid = Path(run.grid_file) if run is not None and run.grid_file else None
        if grid is not None:
            lines.append(f"sample grid: {grid}")
        self.query_one("#files-run", Static).update(escape("\n".join(
            fitted for line in lines for fitted in fit_text(line, width))))
        picture = self.query_one("#files-grid", Static)
        picture.display = grid is not None and grid.is_file()
        if picture.display:
            from lora_tui.widgets.picture import terminal_picture

            try:
                picture.update(terminal_picture(grid, width, 2 * 12))
            except OSError as exc:
                picture.update(f"[dim]cannot show {escape(str(grid))}: "
                               f"{escape(str(exc))}[/dim]")

    def action_edit(self) -> None:
        if self.path is None or self.report is None:
            return
        self.app.push_screen(EditDialog(self.path, self.report["user"]), self._edited)

    def _edited(self, result: tuple[dict[str, str], list[str], Path | None] | None) -> None:
        if result is None or self.path is None:
            return
        fields, clear, cover = result
        try:
            done = edit_lora(self.path, fields, clear, cover)
        except LoraError as exc:
            self.say(escape(exc.message) + (f"\n[dim]{escape(exc.hint)}[/dim]"
                                             if exc.hint else ""), error=True)
            return
        self.show_file(self.path)
        self.say(escape("; ".join(done)) if done else "nothing changed")

    def action_resize(self) -> None:
        if self.path is not None:
            self.app.push_screen(RankPrompt(self.report.get("dim") if self.report else None),
                                 self._resize)

    def _resize(self, rank: int | None) -> None:
        if rank is not None and self.path is not None:
            self.busy = True
            self.refresh_bindings()
            self.run_resize(self.path, rank, resized_name(self.path, rank))

    @work(exclusive=True, group="resize")
    async def run_resize(self, path: Path, rank: int, output: Path) -> None:
        self.say(f"resizing {escape(path.name)} to rank {rank}...")
        outcome = await follow_tool(await start_tool(tool_command(
            "resize", str(path), "--rank", str(rank), "-o", str(output))))
        self.busy = False
        self.refresh_bindings()
        done = outcome.last(LoraFactored)
        if not isinstance(done, LoraFactored):
            self.say(escape(outcome.failure), error=True)
            return
        self.fill_list()
        self.show_file(Path(done.output))
        ranks = ", ".join(f"{rank} ({count})" for rank, count in done.ranks.items())
        kept = "" if done.retained_mean is None else (
            f"; norm kept: lowest {done.retained_lowest:.4f}, mean {done.retained_mean:.4f}")
        self.say(escape(f"Wrote {done.output}\n{done.modules} modules at rank {ranks}{kept}"))


class EditDialog(ModalScreen[tuple[dict[str, str], list[str], Path | None] | None]):
    """The user fields of a LoRA; Enter (or Ctrl+S) saves, Escape cancels. An emptied field
    is removed from the file."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, path: Path, current: dict[str, str]) -> None:
        super().__init__(classes="dialog")
        self.path = path
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(f"Info of {escape(self.path.name)} (the original is kept as "
                         f"{escape(self.path.name)}.backup)", classes="dialog-question")
            for name in TEXT_FIELDS:
                with Horizontal(classes="edit-row"):
                    yield Static(name, classes="edit-label")
                    yield OrderedInput(self.current.get(name, ""), id=f"edit-{name}",
                                       compact=True)
            with Horizontal(classes="edit-row"):
                yield Static("cover", classes="edit-label")
                yield PathInput("", self.path.parent, id="edit-cover", compact=True,
                                placeholder="a picture file (empty: keep the cover)")
            yield Static("[dim]Tab: next field · Enter or Ctrl+S: save · Escape: cancel[/dim]")

    def on_mount(self) -> None:
        for field in self.query(OrderedInput):  # Enter saves as it is read, keys in order
            field.submit = self.action_save

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        fields, clear = {}, []
        for name in TEXT_FIELDS:
            text = self.query_one(f"#edit-{name}", Input).value.strip()
            if text and text != self.current.get(name, ""):
                fields[name] = text
            elif not text and self.current.get(name):
                clear.append(name)
        cover_text = self.query_one("#edit-cover", Input).value.strip()
        cover = Path(cover_text).expanduser() if cover_text else None
        if cover is not None and not cover.is_absolute():
            cover = self.path.parent / cover
        self.dismiss((fields, clear, cover) if fields or clear or cover else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RankPrompt(ModalScreen[int | None]):
    """The rank to resize to: a whole number from 1 up to the file's rank."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: int | None) -> None:
        super().__init__(classes="dialog")
        self.current = current

    def compose(self) -> ComposeResult:
        now = f" (now {self.current})" if self.current else ""
        with Vertical(classes="dialog-box"):
            yield Static(f"Resize to rank{now}: the new file is written beside this one",
                         classes="dialog-question")
            yield OrderedInput("", placeholder="e.g. 8", id="rank", type="integer")
            yield Static("", id="rank-error")
            yield Static("[dim]Enter: resize · Escape: cancel[/dim]")

    def on_mount(self) -> None:
        rank = self.query_one("#rank", OrderedInput)
        rank.submit = lambda: self.accept(rank.value)  # as Enter is read, keys in order

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.accept(event.value)

    def accept(self, value: str) -> None:
        try:
            rank = int(value)
        except ValueError:
            rank = 0
        if rank < 1 or (self.current and rank > self.current):
            limit = f" up to {self.current}" if self.current else ""
            self.query_one("#rank-error", Static).update(
                f"[red]give a whole number from 1{limit}[/red]")
            return
        self.dismiss(rank)

    def action_cancel(self) -> None:
        self.dismiss(None)
