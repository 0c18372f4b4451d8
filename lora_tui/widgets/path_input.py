"""An Input for paths: completion as the user types (``PathSuggester``), taken with Tab, the
key shells use for it, or with Right. Tab with nothing to complete moves to the next field
as usual. Used by path fields and by the path prompts; works over SSH (no native dialog)."""

from __future__ import annotations

from pathlib import Path

from lora_tui.widgets.ordered_keys import OrderedInput
from lora_tui.widgets.path_suggester import PathSuggester


class PathInput(OrderedInput):
    def __init__(self, value: str = "", base_dir: Path | None = None, **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(base_dir or Path.cwd()), **kwargs)

    @property
    def completion(self) -> str:
        """The completion of what is typed ("" when there is none), worked out now: Tab
        may come before the suggestion shown as the user types is ready."""
        suggester = self.suggester
        found = suggester.complete(self.value) if isinstance(suggester, PathSuggester) else None
        return found if found and len(found) > len(self.value) else ""

    def on_tab(self) -> bool:
        """Tab takes the completion when there is one (else it moves on)."""
        completion = self.completion if self.cursor_at_end else ""
        if not completion:
            return False
        self.value = completion
        self.cursor_position = len(self.value)
        return True
