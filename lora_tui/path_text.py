"""Paths in narrow panes: the file name whole, the folder part cut in the middle.

A pane that wraps a long absolute path breaks the file name across lines
("quickstart-0000" / "01.safetensors"), and the name is the part a person reads. These
helpers fit a path, or a "label path" line, into a width instead: the folder part loses its
middle to an ellipsis, which keeps where the file lives (the start) and the folders next to
it (the end): ``/home/me/…/out/quickstart-000001.safetensors``. A name wider than the whole
width is shown alone, broken between its parts (``quickstart-step00000004`` /
``.safetensors``), never cut.

Used by the training screen's log and Files panes; the full paths stay in the screen's data
and in the run folder's ``events.jsonl``.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
_SEPARATORS = "/\\"
# A line that ends in a path ("saved /out/x.safetensors", "run folder: C:\\runs\\x"): an
# absolute path with at least two separators, after the last space.
_TRAILING_PATH = re.compile(r"^(.*\S)\s+((?:[A-Za-z]:)?[\\/][^\s\\/]*[\\/]\S*)$")


def split_name(path: str) -> tuple[str, str]:
    """``(folder, name)``: the folder keeps its trailing separator; ``folder + name`` is
    ``path``."""
    cut = max(path.rfind(sep) for sep in _SEPARATORS) + 1
    return path[:cut], path[cut:]


def shorten_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` characters when its name fits: the name whole, the
    folder cut in the middle (at separators where it can) with an ellipsis."""
    if len(path) <= width:
        return path
    folder, name = split_name(path)
    room = width - len(name) - len(ELLIPSIS)  # for the folder's start and end
    if room < 6:  # too little to say anything of the folder
        return ELLIPSIS + name if len(name) < width else name
    # The start: the first folder ("/home/", "C:\\") when it takes at most half the room.
    firsts = [i for i in (folder.find(sep, 1) for sep in _SEPARATORS) if i >= 0]
    head = folder[:min(firsts) + 1] if firsts else ""
    if len(head) > room // 2:
        head = folder[:room // 2]
    tail = folder[len(folder) - (room - len(head)):]
    # The end starts at a separator when that costs little ("…/out/" over "…ut/out/").
    cuts = [i for i in (tail.find(sep) for sep in _SEPARATORS) if i >= 0]
    if cuts and min(cuts) <= len(tail) // 4:
        tail = tail[min(cuts):]
    return head + ELLIPSIS + tail + name


def break_name(name: str, width: int) -> list[str]:
    """A file name wider than ``width`` on lines of at most ``width``, broken where a name
    has its parts (before ``.`` and ``-``, after ``_``), not wherever the pane ends: at
    80x24 a checkpoint's name (``quickstart-step00000004.safetensors``) is wider than the
    Files pane, which once showed ``quickstart-step00000004.safeten`` / ``sors``."""
    lines: list[str] = []
    while len(name) > width > 0:
        cuts = [i for i, ch in enumerate(name[:width + 1]) if i > 0 and ch in ".-"] \
            + [i + 1 for i, ch in enumerate(name[:width]) if ch == "_"]
        cut = max(cuts, default=width)
        lines.append(name[:cut])
        name = name[cut:]
    return [*lines, name]


def fit_line(label: str, path: str, width: int, indent: int = 2) -> list[str]:
    """``label path`` as one line when the path fits after the label with its name whole,
    else the label, then the path on its own line (indented when the name fits so); a name
    wider than the whole line is broken between its parts (:func:`break_name`)."""
    if not label:
        return break_name(shorten_path(path, width), width)
    room = width - len(label) - 1
    _, name = split_name(path)
    if len(path) <= room or len(name) + len(ELLIPSIS) <= room:
        return [f"{label} {shorten_path(path, room)}"]
    if len(name) + indent > width:
        indent = 0  # the name needs the whole line
    return [label, *break_name(" " * indent + shorten_path(path, width - indent), width)]


def fit_text(text: str, width: int) -> list[str]:
    """A line of text fitted by :func:`fit_line` when it ends in an absolute path; as it
    is otherwise (the pane wraps it at spaces)."""
    found = _TRAILING_PATH.match(text)
    if found is None or len(text) <= width:
        return [text]
    return fit_line(found.group(1), found.group(2), width)
