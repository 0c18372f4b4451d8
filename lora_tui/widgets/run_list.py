"""The list of recent runs on the start screen: state, name, step / total, age.

Runs come from ``lora_core.runs.status.list_runs`` (every run on this machine, started
from the wizard, a script or another terminal). Running ones are listed first, then the
newest. A "running" record whose process is gone reads as "crashed" there, so a run killed
with the machine never looks alive. :func:`run_detail` is what the screen shows for the
selected run: where it is, what to do with it, and for a crashed or failed one its message
and the tail of its log.
"""

from __future__ import annotations

import time

from rich.markup import escape
from textual.widgets import DataTable

from lora_core.durations import format_age
from lora_core.runs.status import RunStatus, log_tail

_NAME_WIDTH = 28
_DETAIL_LOG_LINES = 3
_DETAIL_WIDTH = 74
_STATE_COLOURS = {"running": "green", "starting": "green", "stopping": "yellow",
                  "crashed": "red", "failed": "red", "stopped": "yellow"}


def order_runs(runs: list[RunStatus]) -> list[RunStatus]:
    """Active runs first; otherwise the order given (newest first). Stable."""
    return sorted(runs, key=lambda run: not run.active)


def step_text(run: RunStatus) -> str:
    return f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)


def run_detail(run: RunStatus) -> str:
    """Markup describing one run and the keys that apply to it."""
    lines = [f"[b]{escape(run.output_name)}[/b] {escape(run.status)}, step {step_text(run)}"
             f"  [dim]{escape(run.run_dir)}[/dim]"]
    keys = ["Enter / A: follow it live" if run.active else "Enter / A: show its events"]
    if run.resumable:
        keys.append(f"C: continue from its saved state (step {run.last_state_step or run.step})")
    lines.append("[dim]" + " · ".join(keys) + "[/dim]")
    if run.final_file and run.status in ("finished", "stopped"):
        lines.append(f"LoRA: {escape(run.final_file)}")
    if run.status in ("crashed", "failed"):
        if run.message:
            lines.append(f"[red]{escape(run.message)}[/red]")
        # A failed run's message says what happened; a crashed one has only its log. Short
        # lines without tracebacks, so it fits an 80x24 screen (the log has everything).
        tail = [] if run.status == "failed" and run.message else \
            log_tail(run.path, _DETAIL_LOG_LINES, tracebacks=False)
        if tail:
            lines.append("[b]last lines of the log:[/b]")
            lines += [escape(_clip(line, _DETAIL_WIDTH)) for line in tail]
        lines.append(f"[dim]log: {escape(str(run.path / 'train.log'))}[/dim]")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


class RunList(DataTable):
    """Recent runs, one row each, keyed by run folder (the cursor stays on its run when the
    list is refreshed)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.runs: list[RunStatus] = []

    def on_mount(self) -> None:
        self.add_columns("state", "run", "step", "age")

    def show_runs(self, runs: list[RunStatus]) -> None:
        selected = self.selected
        self.runs = order_runs(runs)
        self.clear()
        now = time.time()
        for run in self.runs:
            colour = _STATE_COLOURS.get(run.status, "")
            state = f"[{colour}]{run.status}[/{colour}]" if colour else run.status
            name = run.output_name if len(run.output_name) <= _NAME_WIDTH else \
                run.output_name[:_NAME_WIDTH - 1] + "…"
            # A running run: how long it has run; an ended one: how long ago it ended.
            since = run.started_at if run.active else run.updated_at
            self.add_row(state, escape(name), step_text(run), format_age(now - since),
                         key=run.run_dir)
        if selected is not None:
            row = next((i for i, r in enumerate(self.runs) if r.run_dir == selected.run_dir), 0)
            self.move_cursor(row=row)

    @property
    def selected(self) -> RunStatus | None:
        row = self.cursor_row
        return self.runs[row] if 0 <= row < len(self.runs) else None
