"""Completion for path fields typed in the terminal (never a native dialog: the wizard must
work over SSH with no display). The suggestion completes the last part of the path with the
first matching entry of its folder; Tab or Right accepts it (``PathInput``)."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester


class PathSuggester(Suggester):
    def __init__(self, base_dir: Path) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.base_dir = base_dir

    async def get_suggestion(self, value: str) -> str | None:
        return self.complete(value)

    def complete(self, value: str) -> str | None:
        """``value`` with its last part completed from its folder (None: nothing to add)."""
        if not value or value.startswith("builtin:"):
            return None
        head, _, stem = value.rpartition("/")
        folder = Path(os.path.expanduser(head or ".")) if head or value.startswith("/") \
            else Path(".")
        if value.startswith("/") and not head:
            folder = Path("/")
        if not folder.is_absolute():
            folder = self.base_dir / folder
        try:
            names = sorted(entry.name + ("/" if entry.is_dir() else "")
                           for entry in os.scandir(folder) if entry.name.startswith(stem)
                           and not entry.name.startswith("."))
        except OSError:
            return None
        for name in names:
            if name != stem:
                return (head + "/" if head or value.startswith("/") else "") + name
        return None
