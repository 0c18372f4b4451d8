"""What the engine says on its first stop request: the terminal's key to abort only when a
person reads it in a terminal. A run whose output goes to a file (the wizard's child, a
detached run) says what happens and leaves the keys to its UI (issue 24)."""

from __future__ import annotations

import io
import sys

from lora_core.cli import StopFlag


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _first_stop_says(monkeypatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    flag = StopFlag()
    flag.handle()
    assert flag()  # asked to stop after this step, either way
    return stream.getvalue()


def test_a_run_in_a_terminal_names_ctrl_c_to_abort(monkeypatch):
    said = _first_stop_says(monkeypatch, _Terminal())
    assert "stopping after this step and saving what was trained" in said
    assert "press Ctrl+C again to abort without saving" in said


def test_a_run_writing_to_a_file_never_names_a_terminal_key(monkeypatch):
    said = _first_stop_says(monkeypatch, io.StringIO())  # as the wizard's child's output
    assert said.strip() == "stopping after this step and saving what was trained"
