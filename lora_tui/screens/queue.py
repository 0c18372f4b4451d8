"""The queue: saved profiles run one after another, each row showing its live state.

Keys: A add profiles (a .toml file, a folder of them, or a pattern such as ``runs/*.toml``),
X / Delete remove the selected row, U / Shift+Up and D / Shift+Down move it, R run every row
that is not done yet (in order, going on after a failure), S stop (asks first; the current
run stops after its step and saves what was trained, the rest are not started), C clear the
done rows, Escape back.

Each profile runs through the app's runner, exactly like Train on the review screen (one
``lora-train run`` child process at a time), not through ``lora-train queue``: following each
child's event stream is what lets a row show ``running 12/80`` and a failure's own message.
A failure never stops the queue (``lora-train queue --continue-on-error``); only Stop does.

The list, with each row's last result, is kept in ``state_dir()/queue.json`` (written
atomically on every change of a row's state, not on every step), so it survives a restart.
"""

from __future__ import annotations

import glob
import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from lora_core.atomic import atomic_write_bytes
from lora_core.errors import LoraError
from lora_core.events import RunFailed, RunFinished, RunStarted, StepEnded
from lora_core.paths import state_dir
from lora_core.profile_load import load_profile
from lora_tui.dialogs.confirm import ConfirmDialog
from lora_tui.dialogs.path_prompt import PathPrompt
from lora_tui.runner import Output, Runner

QUEUE_FILE = "queue.json"
QUEUE_VERSION = 1
STATES = ("waiting", "running", "done", "failed", "stopped", "skipped")
_TAIL_LINES = 5  # plain output lines kept to explain a child that died without run_failed
_NAME_WIDTH = 22


def queue_file() -> Path:
    return state_dir() / QUEUE_FILE


@dataclass
class QueueEntry:
    """One profile in the queue and what its last run did."""

    profile: Path
    state: str = "waiting"
    step: int = 0
    total_steps: int | None = None
    files: list[str] = field(default_factory=list)
    final_file: str = ""
    message: str = ""
    hint: str = ""

    def reset(self) -> None:
        self.state, self.step, self.total_steps = "waiting", 0, None
        self.files, self.final_file, self.message, self.hint = [], "", "", ""

    def state_text(self) -> str:
        if self.state == "running":
            total = self.total_steps if self.total_steps is not None else "?"
            return f"running {self.step}/{total}"
        return self.state

    def result_text(self) -> str:
        if self.state in ("done", "stopped") and self.final_file:
            extra = f" (+{len(self.files) - 1} files)" if len(self.files) > 1 else ""
            return Path(self.final_file).name + extra
        return " ".join(first_problem(self.message).split())

    def to_json(self) -> dict:
        data = asdict(self)
        data["profile"] = str(self.profile)
        return data

    @classmethod
    def from_json(cls, data: dict) -> QueueEntry:
        entry = cls(Path(data["profile"]))
        for key in ("state", "step", "total_steps", "files", "final_file", "message", "hint"):
            if key in data:
                setattr(entry, key, data[key])
        if entry.state not in STATES:
            raise ValueError(f"unknown state {entry.state!r}")
        if entry.state == "running":
            # The app ended during this run (closed or killed): it did not finish here.
            entry.state, entry.message = "stopped", "the app closed while it was running"
        return entry


def load_queue(path: Path | None = None) -> list[QueueEntry]:
    """The saved queue; empty when none was saved. A damaged file raises LoraError."""
    path = path or queue_file()
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [QueueEntry.from_json(item) for item in data["entries"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoraError(f"the saved queue {path} is unreadable: {exc}",
                        "delete that file; the queue starts empty again") from None


def save_queue(entries: list[QueueEntry], path: Path | None = None) -> None:
    data = {"version": QUEUE_VERSION, "entries": [e.to_json() for e in entries]}
    atomic_write_bytes(path or queue_file(), json.dumps(data, indent=2).encode("utf-8"))


def expand_profiles(path: Path) -> list[Path]:
    """The profiles a typed path names: the file itself, every .toml in a folder, or every
    match of a pattern (``*``, ``?``, ``[...]``), sorted. Raises LoraError when none."""
    text = str(path)
    if any(c in text for c in "*?["):
        found = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
    elif path.is_dir():
        found = sorted(p for p in path.glob("*.toml") if p.is_file())
    else:
        found = [path] if path.is_file() else []
    if not found:
        raise LoraError(f"no profile found at {path}",
                        "type the path of a .toml profile, a folder holding some, or a "
                        "pattern such as profiles/*.toml")
    return found


def first_problem(message: str) -> str:
    """What a row can show of a failure: the problem itself, not the heading of a list
    ("the profile has 2 problems:" then "  - ..." lines gives "(1 of 2) ...")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    items = [line[2:] for line in lines[1:] if line.startswith("- ")]
    if not items or not lines[0].endswith(":"):
        return message
    return items[0] if len(items) == 1 else f"(1 of {len(items)}) {items[0]}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


class QueueScreen(Screen):
    # (to move into app.tcss, which another change owns right now)
    DEFAULT_CSS = """
    QueueScreen #queue-table { height: 1fr; }
    QueueScreen #queue-detail { height: auto; max-height: 8; padding: 0 1; overflow-y: auto; }
    """
    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("x,delete", "remove", "Remove"),
        Binding("u,shift+up", "move(-1)", "Up"),
        Binding("d,shift+down", "move(1)", "Down"),
        # Short labels: every key fits the footer at 80 columns (the title line says more).
        Binding("r", "run", "Run"),
        Binding("s", "stop", "Stop"),
        Binding("c", "clear_done", "Clear"),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__(classes="queue-screen")
        self.entries: list[QueueEntry] = []
        self.current: QueueEntry | None = None
        self._runner: Runner | None = None
        self._stop_requested = False
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)

    @property
    def running(self) -> bool:
        return self.current is not None

    @property
    def table(self) -> DataTable:
        return self.query_one("#queue-table", DataTable)

    def compose(self) -> ComposeResult:
        yield Static("[b]Queue[/b]  [dim]A add · U/D move · X remove · R run all · S stop · "
                     "C clear done[/dim]", classes="step-title")
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.table.add_columns("#", "profile", "state", "result")
        try:
            self.entries = load_queue()
        except LoraError as exc:
            self.notify(f"{exc.message}\n{exc.hint}", severity="error", timeout=15)
        self._render_rows()

    # -- the table ----------------------------------------------------------------------

    @property
    def _result_width(self) -> int:
        """What is left of the table's width for the result column (at least 12): the
        other columns as wide as their cells, each with its padding, and the scrollbar."""
        width = self.table.size.width or 80
        names = max((len(e.profile.name) for e in self.entries), default=0)
        name_width = min(_NAME_WIDTH, max(len("profile"), names))
        index_width = max(1, len(str(len(self.entries))))
        return max(12, width - index_width - name_width - len("running 999/9999") - 10)

    def _cells(self, index: int, entry: QueueEntry) -> tuple[str, str, str, str]:
        return (str(index + 1), _clip(entry.profile.name, _NAME_WIDTH), entry.state_text(),
                _clip(entry.result_text(), self._result_width))

    def on_resize(self) -> None:
        if self.is_mounted and self.entries:
            self._render_rows()

    def _render_rows(self, cursor: int | None = None) -> None:
        table = self.table
        row = table.cursor_row if cursor is None else cursor
        table.clear()
        for index, entry in enumerate(self.entries):
            table.add_row(*self._cells(index, entry))
        if self.entries:
            table.move_cursor(row=max(0, min(row, len(self.entries) - 1)))
        self._show_detail()
        self.refresh_bindings()

    def _update_row(self, entry: QueueEntry) -> None:
        if entry not in self.entries:
            return
        index = self.entries.index(entry)
        for column, value in enumerate(self._cells(index, entry)):
            self.table.update_cell_at((index, column), value, update_width=True)
        if index == self.table.cursor_row:
            self._show_detail()

    def selected(self) -> QueueEntry | None:
        row = self.table.cursor_row
        return self.entries[row] if 0 <= row < len(self.entries) else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        detail = self.query_one("#queue-detail", Static)
        entry = self.selected()
        if entry is None:
            detail.update("The queue is empty. A adds a saved profile (.toml), a folder of "
                          "them or a pattern.")
            return
        lines = [f"[b]{escape(str(entry.profile))}[/b]: {escape(entry.state_text())}"]
        if entry.message:
            colour = "red" if entry.state == "failed" else "yellow"
            lines.append(f"[{colour}]{escape(entry.message)}[/{colour}]")
        if entry.hint:
            lines.append(f"[b]hint:[/b] {escape(entry.hint)}")
        lines += [f"  {escape(f)}" for f in entry.files]
        detail.update("\n".join(lines))

    def _save(self) -> None:
        try:
            save_queue(self.entries)
        except LoraError as exc:
            self.notify(f"the queue could not be saved: {exc.message}", severity="warning")

    # -- editing ------------------------------------------------------------------------

    def action_add(self) -> None:
        self.app.push_screen(
            PathPrompt("Add to the queue: a profile (.toml), a folder of them, or a pattern:",
                       base_dir=Path.cwd()), self.add_profiles)

    def add_profiles(self, path: Path | None) -> list[Path]:
        """Add the profiles ``path`` names (see :func:`expand_profiles`); each must load as
        a profile. Returns those added; problems are shown, never raised."""
        if path is None:
            return []
        try:
            candidates = expand_profiles(path)
        except LoraError as exc:
            self.notify(f"{exc.message}\n{exc.hint}", severity="error", timeout=10)
            return []
        added = []
        for candidate in candidates:
            try:
                load_profile(candidate)  # refuse a broken file now, not at its turn
            except LoraError as exc:
                self.notify(f"not added: {exc.message}", severity="error", timeout=10)
                continue
            self.entries.append(QueueEntry(candidate.absolute()))
            added.append(candidate)
        if added:
            self._save()
            self._render_rows(cursor=len(self.entries) - 1)
        return added

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "run":
            return not self.running and any(e.state != "done" for e in self.entries)
        if action == "stop":
            return self.running and not self._stop_requested
        if action in ("remove", "move"):
            return self.selected() is not None
        return True

    def action_remove(self) -> None:
        entry = self.selected()
        if entry is None:
            return
        if entry is self.current:
            self.notify("this profile is running: stop the queue first", severity="warning")
            return
        row = self.table.cursor_row
        self.entries.remove(entry)
        self._save()
        self._render_rows(cursor=row)

    def action_move(self, offset: int) -> None:
        row = self.table.cursor_row
        target = row + offset
        if not (0 <= row < len(self.entries) and 0 <= target < len(self.entries)):
            return
        self.entries[row], self.entries[target] = self.entries[target], self.entries[row]
        self._save()
        self._render_rows(cursor=target)

    def action_clear_done(self) -> None:
        self.entries = [e for e in self.entries if e.state != "done"]
        self._save()
        self._render_rows(cursor=0)

    def action_leave(self) -> None:
        if self.running:  # leaving would stop following the queue: it must be stopped first
            self.notify("the queue is running: S stops it (the current run saves first)",
                        severity="warning")
            return
        self.app.pop_screen()

    # -- running ------------------------------------------------------------------------

    def action_run(self) -> None:
        if self.running:
            return
        for entry in self.entries:
            if entry.state != "done":
                entry.reset()
        self._stop_requested = False
        self._render_rows()
        self.run_worker(self._run_all(), exclusive=True, name="queue")

    async def _run_all(self) -> None:
        """Run the first waiting row until none is left. Rows added or moved meanwhile are
        picked up, because the next row is chosen only when the previous one has ended."""
        try:
            while not self._stop_requested:
                entry = next((e for e in self.entries if e.state == "waiting"), None)
                if entry is None:
                    break
                await self._run_one(entry)
            for entry in self.entries:
                if entry.state == "waiting":
                    entry.state, entry.message = "skipped", "not run: the queue was stopped"
                    self._update_row(entry)
        finally:
            self.current, self._runner = None, None
            self._save()
            self.refresh_bindings()

    async def _run_one(self, entry: QueueEntry) -> None:
        self.current, self._tail = entry, deque(maxlen=_TAIL_LINES)
        entry.state = "running"
        self._save()
        self._update_row(entry)
        self.refresh_bindings()
        runner = self._runner = self.app.runner_factory()  # type: ignore[attr-defined]
        try:
            code = await runner.run(entry.profile, lambda item: self._output(entry, item))
        except OSError as exc:  # the child could not be started at all
            entry.state, entry.message = "failed", f"lora-train could not start: {exc}"
            entry.hint = "check that the project is installed in this Python environment"
        else:
            self._ended(entry, code)
        self._save()
        self._update_row(entry)

    def _output(self, entry: QueueEntry, item: Output) -> None:
        if isinstance(item, str):
            if item.strip():
                self._tail.append(item)
            return
        if isinstance(item, RunStarted):
            entry.total_steps = item.plan.get("max_train_steps")
        elif isinstance(item, StepEnded):
            entry.step, entry.total_steps = item.step, item.total_steps
        elif isinstance(item, RunFinished):
            entry.files, entry.final_file = list(item.files), item.final_file
            entry.state = "stopped" if item.interrupted else "done"
            entry.step = item.steps
        elif isinstance(item, RunFailed):
            entry.state, entry.message, entry.hint = "failed", item.message, item.hint
        else:
            return
        self._update_row(entry)

    def _ended(self, entry: QueueEntry, code: int) -> None:
        """The state once the child has exited: what its events said, else its exit code."""
        if entry.state == "stopped":
            entry.message = entry.message or "stopped; what was trained is saved"
        elif entry.state in ("done", "failed"):
            pass  # run_finished / run_failed already said it
        elif code == 0:
            entry.state = "done"
        elif self._stop_requested:
            entry.state, entry.message = "stopped", f"stopped (exit code {code})"
        else:
            entry.state = "failed"
            entry.message = f"lora-train exited with code {code} without finishing"
            entry.hint = " / ".join(self._tail) if self._tail else ""

    def action_stop(self) -> None:
        self.app.push_screen(
            ConfirmDialog("Stop the queue? The current run stops after its step and saves "
                          "what was trained; the rest are not started."), self._confirmed_stop)

    def _confirmed_stop(self, yes: bool | None) -> None:
        if not yes or not self.running:
            return
        self._stop_requested = True
        if self._runner is not None:
            self._runner.stop()
        self.notify("stopping after the current step...")
        self.refresh_bindings()
