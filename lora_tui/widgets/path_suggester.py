"""Completion for path fields typed in the terminal (never a native dialog: the wizard must
work over SSH with no display), as a shell completes: the last part of the path is
completed as far as every match agrees (``examples/dataset/`` has ``reg/`` and ``train/``:
nothing is chosen for the user), and the matches are listed when they differ. ``builtin:``
completes to the built-in models' names. ``folders_only`` leaves files out (the tagger wants
its folder, not the ``model.onnx`` in it). Tab or Right takes a completion (``PathInput``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textual.suggester import Suggester

from lora_core.models.builtin import BUILTINS  # names only: no torch (test_tui_boundaries)
from lora_core.models.loading import BUILTIN_PREFIX


@dataclass(frozen=True)
class Completion:
    """What Tab can do with the text typed: ``text`` as far as every match agrees (the
    typed text itself when they differ at once), and the matches' names."""

    text: str
    matches: tuple[str, ...]


class PathSuggester(Suggester):
    def __init__(self, base_dir: Path, folders_only: bool = False,
                 builtins: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.base_dir = base_dir
        self.folders_only = folders_only
        self.builtins = builtins  # a base model field: builtin:<name> completes too
        self.offered = ""  # what an empty input completes to (PathInput.offered)

    async def get_suggestion(self, value: str) -> str | None:
        return self.complete(value)

    def complete(self, value: str) -> str | None:
        """``value`` completed as far as every match agrees (None: nothing to add)."""
        found = self.completion(value)
        return found.text if found is not None and found.text != value else None

    def completion(self, value: str) -> Completion | None:
        """The completion of ``value`` and its matches (None: no match)."""
        if not value and self.offered:
            return Completion(self.offered, (self.offered,))
        if self.builtins and value.startswith(BUILTIN_PREFIX):
            names = tuple(n for n in BUILTINS if n.startswith(value[len(BUILTIN_PREFIX):]))
            return Completion(BUILTIN_PREFIX + os.path.commonprefix(names), names) \
                if names else None
        found = self._path_completion(value) if value else None
        if found is None and self.builtins and value and BUILTIN_PREFIX.startswith(value):
            return Completion(BUILTIN_PREFIX, tuple(BUILTIN_PREFIX + n for n in BUILTINS))
        return found

    def _path_completion(self, value: str) -> Completion | None:
        head, _, stem = value.rpartition("/")
        folder = Path(os.path.expanduser(head or ".")) if head or value.startswith("/") \
            else Path(".")
        if value.startswith("/") and not head:
            folder = Path("/")
        if not folder.is_absolute():
            folder = self.base_dir / folder
        try:
            names = tuple(sorted(
                entry.name + ("/" if entry.is_dir() else "")
                for entry in os.scandir(folder) if entry.name.startswith(stem)
                and not entry.name.startswith(".")
                and (not self.folders_only or entry.is_dir())))
        except OSError:
            return None
        if not names:
            return None
        prefix = head + "/" if head or value.startswith("/") else ""
        return Completion(prefix + os.path.commonprefix(names), names)
