"""Helpers for driving the wizard with Pilot at 80x24."""

from __future__ import annotations

import asyncio
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TRAIN = ROOT / "examples" / "dataset" / "train"
EVENTS_FILE = Path(__file__).parent / "data" / "quickstart_events.jsonl"
SIZE = (80, 24)
FAKE_ENGINE = Path(__file__).parent / "fake_engine.py"  # a stand-in for lora-train run


async def type_into(pilot, section: str, key: str, text: str) -> None:
    """Replace the text of a field's Input on the current step."""
    editor = pilot.app.screen.editor(section, key)
    widget = editor.input_widget
    widget.focus()
    widget.value = text
    await pilot.pause()


async def wait_for(pilot, predicate, timeout_s: float = 30.0) -> None:
    # An upper bound only: a passing wait ends as soon as the condition holds, and a
    # loaded CI machine can take seconds to start a screen.
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)
