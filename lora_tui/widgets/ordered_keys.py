"""Field widgets that keep the keys typed into them in the order they were typed.

Textual routes each key to the widget that has the focus when the key arrives, and runs a
widget's key bindings (Ctrl+U, Enter, Tab, a screen's Ctrl+N...) only after the key has
bubbled up to the app, while an input inserts a printable key as soon as it sees it. Keys
that arrive together (a paste, a fast SSH link, a script) can therefore overtake the key typed
before them: Ctrl+U then "builtin:tiny-sd1" cleared the new text instead of the old, and
"64<Tab>64" put both numbers in the first field.

So the field widgets (:class:`OrderedInput` and the mixin :class:`OrderedKeys` for switches
and selects) handle, where they see them and in order: their own bindings; Tab and Shift+Tab
(the focus, or :meth:`OrderedKeys.on_tab` first: path completion); Enter (``submit``, run at
once, so the focus has moved before the next key is read); and the screen's bindings (Ctrl+N
to the next step). A key that reaches one of them after the focus moved away is passed on to
where the focus went, so nothing typed is lost or typed into the field being left.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import events
from textual.widget import Widget
from textual.widgets import Input


class OrderedKeys:
    """Mixin for a focusable field widget (put it before the Textual class)."""

    submit: Callable[[], None] | None = None  # what Enter does, run as the key is read

    def on_tab(self) -> bool:
        """Tab was pressed: True when handled here (the focus then stays)."""
        return False

    async def ordered_key(self, event: events.Key) -> bool:
        """Handle ``event`` in order; False leaves it to the widget itself (a printable key
        typed into it, or a key it handles in its own way)."""
        widget: Widget = self  # type: ignore[assignment]
        focused = widget.app.focused
        if focused is not None and focused is not widget and widget in focused.ancestors:
            return False  # bubbling up from a part of it (a Select's open list): not ours
        if focused is not widget:
            if focused is not None:  # typed after the focus moved on: it belongs there
                focused.post_message(events.Key(event.key, event.character))
            event.stop()
            event.prevent_default()
            return True
        if event.is_printable:  # typed into it, unless it binds the key (Space in a Select)
            if not widget._bindings.key_to_bindings.get(event.key):
                return False
            handled = await self._run_binding(widget, event.key)
        elif event.key in ("tab", "shift+tab"):
            if event.key == "shift+tab":
                widget.screen.focus_previous()
            elif not self.on_tab():
                widget.screen.focus_next()
            handled = True
        elif event.key == "enter" and self.submit is not None:
            self.submit()
            handled = True
        else:
            handled = await self._run_binding(widget, event.key)
        if handled:
            event.stop()
            event.prevent_default()
        return handled

    @staticmethod
    async def _run_binding(widget: Widget, key: str) -> bool:
        for owner in (widget, widget.screen):
            for binding in owner._bindings.key_to_bindings.get(key, ()):
                if owner.check_action(binding.action, ()) is False:
                    continue
                await owner.run_action(binding.action)
                return True
        return False


class OrderedInput(OrderedKeys, Input):
    async def _on_key(self, event: events.Key) -> None:
        if not await self.ordered_key(event):
            await super()._on_key(event)
