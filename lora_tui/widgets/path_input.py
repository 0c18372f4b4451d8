"""An Input for paths: completion as the user types (``PathSuggester``), taken with Tab, the
key shells use for it, or with Right. Tab with nothing to complete moves to the next field
as usual. Used by path fields and by the path prompts; works over SSH (no native dialog)."""

from __future__ import annotations

from pathlib import Path

from textual import events
from textual.widgets import Input

from lora_tui.widgets.path_suggester import PathSuggester


class PathInput(Input):
    def __init__(self, value: str = "", base_dir: Path | None = None, **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(base_dir or Path.cwd()), **kwargs)

    @property
    def completion(self) -> str:
        """The suggested completion of what is typed ("" when there is none)."""
        return self._suggestion if len(self._suggestion) > len(self.value) else ""

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "tab" and self.cursor_at_end and self.completion:
            event.stop()
            event.prevent_default()
            self.value = self.completion
            self.cursor_position = len(self.value)
            return
        await super()._on_key(event)
