"""What an import did with every option of the source, item by item, as ``lora-train
import`` prints it: mapped (to which field), no effect here and why, left out (with the
parser's hints, such as "did you mean --network_dim?"), off in the source, and what to fix
before training.

Shown over the review when settings are imported (issue 24: the wizard once showed only the
group counts, so a dropped ``--net_dim=128`` went unseen); I on the review shows it again.
The list scrolls with the arrow keys, PageUp/PageDown, Home/End and the mouse wheel; Enter
or Escape closes it.
"""

from __future__ import annotations

import re

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Group titles as ImportResult.render writes them ("Mapped (27):"), and how each is marked.
_TITLE = re.compile(r"^(\S.*) \((\d+)(;[^)]*)?\):$")
_LEFT_OUT = ("Unknown", "Not supported", "To fix")


def report_renderable(report: str) -> Group:
    """The report as ``lora-train import`` prints it, every line kept: group titles in bold
    (yellow for those that lose something), each item after a bullet with its wrapped lines
    indented under it, deeper-indented lines (hints) under their item."""
    parts: list[Text | Table] = []
    rows: list[tuple[str, Text]] = []

    def flush() -> None:
        if rows:
            grid = Table.grid()
            grid.add_column(width=4, no_wrap=True)
            grid.add_column(ratio=1)
            for bullet, text in rows:
                grid.add_row(bullet, text)
            parts.append(grid)
            rows.clear()

    for line in report.rstrip("\n").splitlines():
        indent = len(line) - len(line.lstrip())
        if indent >= 4 and rows:  # a hint or a continuation of the item above
            rows.append(("", Text(line.strip(), style="dim")))
        elif indent:
            item = line.strip()
            rows.append(("  • ", Text(item[2:] if item.startswith("- ") else item)))
        else:
            flush()
            style = ("bold yellow" if line.startswith(_LEFT_OUT) else "bold") \
                if _TITLE.match(line) else ""
            parts.append(Text(line, style=style))
    flush()
    return Group(*parts)


class ImportReportDialog(ModalScreen[None]):
    # Scrolling jumps rather than glides: over SSH an animated scroll arrives as a string of
    # half-drawn frames, and a reader (or a test) sees the group title before its items.
    BINDINGS = [Binding("escape,enter,q", "close", "Close"),
                Binding("pagedown", "jump('page_down')", show=False),
                Binding("pageup", "jump('page_up')", show=False),
                Binding("end", "jump('end')", show=False),
                Binding("home", "jump('home')", show=False)]

    def __init__(self, report: str) -> None:
        super().__init__(classes="dialog import-report")
        self.report = report

    @property
    def body(self) -> VerticalScroll:
        return self.query_one("#import-report-body", VerticalScroll)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static("[b]Imported settings[/b]: every option and where it went",
                         classes="dialog-question")
            with VerticalScroll(id="import-report-body"):
                yield Static(report_renderable(self.report), id="import-report-text")
            yield Static("[dim]↑↓ PgUp PgDn Home End: scroll · Enter/Esc: close · I on the "
                         "review: again[/dim]")

    def on_mount(self) -> None:
        self.body.focus()

    def action_jump(self, how: str) -> None:
        body = self.body
        {"page_down": body.scroll_page_down, "page_up": body.scroll_page_up,
         "end": body.scroll_end, "home": body.scroll_home}[how](animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
