"""A log pane that keeps its raw lines and lays them out again when its width changes.

Textual's RichLog wraps a line once, when it is written, at the width of that moment: after
a resize the old lines keep the old wrapping (cut, or narrow in a wide pane). This log keeps
the lines as written and, when the width changes, clears and writes them all again. A line
that ends in a path is fitted by :func:`lora_tui.path_text.fit_text`: the file name whole,
the folder shortened in the middle.
"""

from __future__ import annotations

from collections import deque

from textual.events import Resize
from textual.widgets import RichLog

from lora_tui.path_text import fit_line, fit_text


class PathLog(RichLog):
    DEFAULT_CSS = """
    PathLog { scrollbar-gutter: stable; }
    """

    def __init__(self, *, max_lines: int = 2000, id: str | None = None) -> None:
        # min_width: lay out at the pane's own width (RichLog's default, 78, would draw past
        # a narrow pane and cut the middle of long lines).
        super().__init__(id=id, wrap=True, markup=False, max_lines=max_lines, min_width=10)
        self.entries: deque[tuple[str, str | None]] = deque(maxlen=max_lines)
        self._laid_out_width = 0

    @property
    def text_width(self) -> int:
        """The columns a line has (the scrollbar's gutter is always kept free)."""
        return self.scrollable_content_region.width

    def add(self, text: str, path: str | None = None) -> None:
        """One line: ``text``, then ``path`` when given (a path at the end of ``text`` is
        found by itself)."""
        self.entries.append((text, path))
        if self._laid_out_width:
            self._write_entry(text, path, self._laid_out_width)
        else:  # not laid out yet: every line so far, once the width is known
            self.reflow()

    def _write_entry(self, text: str, path: str | None, width: int) -> None:
        lines = fit_line(text, path, width) if path else fit_text(text, width)
        for line in lines:
            # At the width laid out for (RichLog would measure against the console's
            # width, which need not be the terminal's yet during a resize).
            self.write(line, width=width)

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self.reflow)

    def reflow(self) -> None:
        """Write every kept line again at the current width (when it changed)."""
        width = self.text_width
        if width <= 0 or width == self._laid_out_width:
            return
        self._laid_out_width = width
        self.clear()
        for text, path in self.entries:
            self._write_entry(text, path, width)
