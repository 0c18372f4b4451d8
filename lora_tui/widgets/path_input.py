"""An Input for paths: completion as the user types (``PathSuggester``), taken with Tab, the
key shells use for it, or with Right. Tab completes as far as every match agrees and lists
the matches when they differ (a second Tab with nothing more to complete moves on); Tab with
nothing to complete moves to the next field as usual. Used by path fields and by the path
prompts; works over SSH (no native dialog)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import events

from lora_tui.widgets.ordered_keys import OrderedInput
from lora_tui.widgets.path_suggester import Completion, PathSuggester

SHOWN_MATCHES = 8  # matches listed after Tab; the rest are counted


def matches_text(matches: tuple[str, ...]) -> str:
    """The matches as one line of markup ("Tab: reg/ · train/")."""
    shown = " · ".join(escape(m) for m in matches[:SHOWN_MATCHES])
    more = f" (+{len(matches) - SHOWN_MATCHES} more)" if len(matches) > SHOWN_MATCHES else ""
    return f"[dim]Tab:[/dim] {shown}{more}"


class PathInput(OrderedInput):
    """``folders_only``: a folder is asked for (files are not offered); ``builtins``: a base
    model, where ``builtin:<name>`` completes too."""

    def __init__(self, value: str = "", base_dir: Path | None = None,
                 folders_only: bool = False, builtins: bool = False, **kwargs) -> None:
        super().__init__(value, suggester=PathSuggester(base_dir or Path.cwd(), folders_only,
                                                        builtins), **kwargs)
        self.listed_for: str | None = None  # the text whose matches were listed last

    @property
    def offered(self) -> str:
        """A path offered while the input is empty (a Flux model's ae.safetensors beside
        it): Tab or Right takes it, as they take a completion; "" for none."""
        suggester = self.suggester
        return suggester.offered if isinstance(suggester, PathSuggester) else ""

    @offered.setter
    def offered(self, path: str) -> None:
        if isinstance(self.suggester, PathSuggester):
            self.suggester.offered = path

    def action_cursor_right(self, select: bool = False) -> None:
        if not self.value and self.offered and not select:
            self.value = self.offered  # Right takes the offer, as it takes a suggestion
            self.cursor_position = len(self.value)
            return
        super().action_cursor_right(select)

    @property
    def matches_current(self) -> bool:
        """Whether the matches listed last are still those of the text as it is now (a
        container hides them when not: a Changed message of a key typed before the Tab, read
        after it, must not hide them)."""
        return self.listed_for is not None and self.listed_for == self.value

    async def _on_key(self, event: events.Key) -> None:
        if event.key != "tab":
            # Anything else typed: the next Tab lists again (C-u and the same text typed
            # again once made Tab move on instead).
            self.listed_for = None
        await super()._on_key(event)

    def completion_of(self) -> Completion | None:
        """What Tab would do now (worked out now: Tab may come before the suggestion shown
        as the user types is ready)."""
        suggester = self.suggester
        return suggester.completion(self.value) if isinstance(suggester, PathSuggester) \
            else None

    @property
    def completion(self) -> str:
        """The completion of what is typed ("" when there is none)."""
        found = self.completion_of()
        return found.text if found and len(found.text) > len(self.value) else ""

    def on_tab(self) -> bool:
        """Tab completes (True: the focus stays), or lists the matches when they differ;
        False (move on) when there is nothing to add or the matches were listed already."""
        found = self.completion_of() if self.cursor_at_end else None
        if found is None:
            return False
        if len(found.text) > len(self.value):
            self.value = found.text
            self.cursor_position = len(self.value)
            if len(found.matches) > 1:
                self.show_matches(found.matches)
            return True
        if len(found.matches) > 1 and self.listed_for != self.value:
            self.show_matches(found.matches)
            return True
        return False

    def show_matches(self, matches: tuple[str, ...]) -> None:
        """List the matches where the field shows them (a ``show_matches`` of a container:
        the field editor's line, a dialog's), else in a notification."""
        self.listed_for = self.value
        text = matches_text(matches)
        for node in self.ancestors:
            show = getattr(node, "show_matches", None)
            if callable(show):
                show(text)
                return
        self.notify(Text.from_markup(text).plain, timeout=6)  # notifications are plain
