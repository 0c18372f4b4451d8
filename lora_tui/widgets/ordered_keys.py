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
once, so the focus has moved before the next key is read); and every other binding, looked
up as the app would but while the field still has the focus (Ctrl+N to the next step; a key
left to bubble up is stopped, or the app would look it up against a later focus). A key that
reaches one of them after the focus moved away is passed on to where the focus went, so
nothing typed is lost or typed into the field being left. When Enter or Ctrl+N is refused
(the field has a problem), the keys typed with it are left out with a word
(:func:`refuse_keys_typed_before`): they were meant for the next field.

Whatever runs for a key here moves the focus with :func:`focus_now` (``Screen.set_focus``, at
once), never ``Widget.focus()``: that one waits for the app's queue, so the keys already
typed after Enter were read by the field being left (``out/burst`` Enter ``burstname``
Enter put ``burstname`` in the output folder). Keys that come while no widget has the focus
(a step being pushed, a dialog closing) wait in :func:`hold_key` until one has it (the
app's ``on_event`` holds those it reads then). A menu's key (a list's, a button's: N on
the start menu, E on Files) runs its binding as the app reads it
(:func:`run_binding_as_read`), and the keys typed while a closed dialog's answer is on its
way to the screen that opened it wait for it (:func:`settle_keys`).
"""

from __future__ import annotations

from collections.abc import Callable

from textual import events
from textual._time import get_time
from textual.app import App
from textual.message_pump import MessagePump
from textual.widget import Widget
from textual.widgets import Input, TextArea

_HELD = "_ordered_keys_held"  # the app's keys waiting for a focused widget
_HOLD_LIMIT_S = 5.0  # the longest a key waits (a busy machine takes a while to show a step)


def focus_now(widget: Widget) -> None:
    """Give ``widget`` the focus before the next key is read (see the module doc); it is
    scrolled into view once laid out (a screen still mounting has no layout to scroll)."""
    widget.screen.set_focus(widget, scroll_visible=False)
    widget.call_after_refresh(lambda: widget.scroll_visible(animate=False))


def pass_key(app: App, event: events.Key) -> None:
    """``event`` to the widget that has the focus now, after any key still held. A key for
    a menu (a list, a button) waits a moment in :func:`hold_key` too: its binding is run
    as it is given (:func:`run_binding_as_read`), as when the app reads it."""
    focused = app.focused
    if not holds_keys(app) and _is_field(focused):
        focused._forward_event(_copy(event))  # forwarded: bubbling to the app ends there
        return
    hold_key(app, event)


def _is_field(widget: Widget | None) -> bool:
    """A widget that takes typed keys in order itself (an input, a text area, a select and
    its open list, a switch)."""
    return widget is not None and (
        isinstance(widget, (Input, TextArea, OrderedKeys))
        or any(isinstance(a, OrderedKeys) for a in widget.ancestors))


def _copy(event: events.Key) -> events.Key:
    key = events.Key(event.key, event.character)
    key.time = event.time  # when it was typed (refuse_keys_typed_before reads it)
    return key


def refuse_keys_typed_before(widget: Widget) -> None:
    """Enter or Ctrl+N was refused in ``widget`` (its field has a problem): the keys typed
    with it, read after it, were meant for the next field and are left out (with a word),
    not typed into this one. Keys typed from now on are the user's answer to the refusal."""
    widget._refused_before = get_time()  # type: ignore[attr-defined]


def holds_keys(app: App) -> bool:
    """Whether a key the app reads now must wait: keys before it wait, the screen just
    shown has not given its first field the focus yet, or a dialog just closed and what it
    answered has not been acted on yet (:func:`settle_keys`)."""
    return getattr(app, _HELD, None) is not None or _focus_coming(app) or _settling(app)


_SETTLING = "_ordered_keys_settling_until"
_SETTLE_LIMIT_S = 0.5  # the longest keys wait for a closed dialog's answer to be acted on


def settle_keys(app: App, requester: MessagePump) -> None:
    """A dialog is closing: Textual hands its answer to ``requester`` (the screen that
    opened it) with ``call_next``, after the keys already typed are read. Those keys wait
    until the answer has been acted on: Files -> P, a path, Enter, then E in one burst once
    read E before the file was shown (no file: nothing to edit), and the keys after it went
    to the list."""
    setattr(app, _SETTLING, get_time() + _SETTLE_LIMIT_S)
    requester.call_next(lambda: setattr(app, _SETTLING, 0.0))


def _settling(app: App) -> bool:
    return get_time() < getattr(app, _SETTLING, 0.0)


def _focus_coming(app: App) -> bool:
    """No widget has the focus yet, but one will: the screen is still being shown, or it
    has fields (a step focuses its first as it mounts)."""
    screen = app.screen
    return app.focused is None and (not screen.is_mounted or bool(screen.focus_chain))


def hold_key(app: App, event: events.Key) -> None:
    """Keep ``event`` until a widget has the focus (a screen is being shown), then give it
    there, in the order the keys came."""
    held: list[events.Key] | None = getattr(app, _HELD, None)
    if held is None:
        held = []
        setattr(app, _HELD, held)
        deadline = get_time() + _HOLD_LIMIT_S
        app.set_timer(0.01, lambda: _release(app, deadline))
    held.append(_copy(event))


async def _release(app: App, deadline: float) -> None:
    held: list[events.Key] = getattr(app, _HELD, None) or []
    target = app.focused
    if get_time() < deadline and ((target is None and _focus_coming(app)) or _settling(app)):
        app.set_timer(0.02, lambda: _release(app, deadline))
        return
    setattr(app, _HELD, None)
    for index, key in enumerate(held):
        if index and get_time() < deadline and holds_keys(app):
            # The key before opened a screen or closed a dialog: the rest wait for it.
            for rest in held[index:]:
                hold_key(app, rest)
            return
        if not await run_binding_as_read(app, key):  # a menu's key runs now, as read
            (app.focused or app.screen)._forward_event(key)


async def run_binding_as_read(app: App, event: events.Key) -> bool:
    """A key the app reads while a list, a button or a table has the focus: its binding
    (the widget's, its screen's, the app's) runs now, as the key is read. Left to Textual,
    it runs once the key has bubbled back up from the widget, and by then the app has read
    the keys typed after it and given them to that same widget: ``e`` then ``C-u My cube
    LoRA`` in one burst on the Files screen lost the title's text, ``n`` then a model path
    on the start menu lost the path. A screen the binding shows makes the next keys wait
    for its first field (:func:`holds_keys`). True when a binding took the key.

    Fields (inputs, selects, switches: :class:`OrderedKeys`, text areas) order their own
    keys; a key some priority binding takes is left to Textual, which tries those first."""
    focused = app.focused
    if focused is None or _is_field(focused):
        return False
    chain = focused.screen._modal_binding_chain
    if any(binding.priority for _namespace, bindings in chain
           for binding in bindings.key_to_bindings.get(event.key, ())):
        return False
    return await OrderedKeys._run_binding(focused, event.key)


class OrderedKeys:
    """Mixin for a focusable field widget (put it before the Textual class)."""

    submit: Callable[[], None] | None = None  # what Enter does, run as the key is read

    def on_tab(self) -> bool:
        """Tab was pressed: True when handled here (the focus then stays)."""
        return False

    async def _on_key(self, event: events.Key) -> None:
        widget: Widget = self  # type: ignore[assignment]
        focused = widget.app.focused
        if focused is not None and focused is not widget and widget in focused.ancestors:
            return  # bubbling up from a part of it (a Select's open list): not ours
        if not await self.ordered_key(event):
            await super()._on_key(event)  # type: ignore[misc]  # the widget's own keys
            # Every binding that could take it was tried as it was read (ordered_key); left
            # to bubble, the app would look the key up again against the focus as it is by
            # then (Ctrl+U on a Select once cleared the field that Enter moved to).
            event.stop()

    async def ordered_key(self, event: events.Key) -> bool:
        """Handle ``event`` in order; False leaves it to the widget itself (a printable key
        typed into it, or a key it handles in its own way)."""
        widget: Widget = self  # type: ignore[assignment]
        focused = widget.app.focused
        if focused is not widget or getattr(widget.app, _HELD, None) is not None:
            # typed after the focus moved on (or while keys wait for it): it belongs there
            pass_key(widget.app, event)
            event.stop()
            event.prevent_default()
            return True
        if event.time <= getattr(widget, "_refused_before", -1.0):
            if not getattr(widget, "_told_refused", False):
                widget._told_refused = True  # type: ignore[attr-defined]
                widget.notify("left out the keys typed after Enter: this field has a "
                              "problem to fix first", severity="warning", timeout=6)
            event.stop()
            event.prevent_default()
            return True
        widget._told_refused = False  # type: ignore[attr-defined]
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
        """The key's binding, looked up now as the app would (the widget, its containers,
        the screen up to a modal one, the app), while the widget still has the focus."""
        for namespace, bindings in widget.screen._modal_binding_chain:
            for binding in bindings.key_to_bindings.get(key, ()):
                if binding.priority:
                    continue  # the app tried it before the key was passed on
                if await widget.app.run_action(binding.action, namespace):
                    return True
        return False


class OrderedInput(OrderedKeys, Input):
    """An Input whose keys land in order; ``submit`` (when set) is what Enter does."""
