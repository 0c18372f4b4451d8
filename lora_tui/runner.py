"""Runs ``lora-train run PROFILE --events -`` as a child process and follows its event stream.

The wizard never trains in its own process (it must not import torch): it starts the
headless CLI and reads one JSON event per stdout line (``lora_core.events``). Everything here
is asyncio, awaited from a Textual worker on the app's event loop, so the UI never waits on
the child. Lines that are not events (a library printing to stdout) and the child's stderr
are passed on as plain text for the log pane.

Stop sends SIGINT once: the engine finishes the current step, saves an ``-interrupted`` file
and exits (see ``lora_core.cli.StopFlag``). A child that has not exited ``kill_after_s``
later is killed.

:class:`FakeRunner` replays a recorded list of events with the same interface, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from lora_core.events import Event, RunFailed, RunFinished, event_from_json, read_events

# What a runner hands to the screen: a parsed event, or a line of plain output.
Output = Event | str
OutputSink = Callable[[Output], None]

# A run_started line carries the whole plan; asyncio's default 64 KiB line limit is too small.
_LINE_LIMIT_BYTES = 16 * 1024 * 1024


class Runner(Protocol):
    """Starts one training run and reports what it says; stop() asks it to end cleanly."""

    async def run(self, profile_path: Path, emit: OutputSink) -> int:
        """Run to the end, calling ``emit`` for every event or output line; the exit code."""
        ...

    def stop(self) -> None:
        """Ask the run to stop after the current step and save what was trained."""
        ...


def parse_line(line: str) -> Output:
    """An event when the line is one, else the line itself."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            return event_from_json(text)
        except (ValueError, KeyError, TypeError):
            pass  # not an event after all: show it as text
    return text


def train_command(profile_path: Path) -> list[str]:
    """The child's argv: this interpreter running lora_core's CLI (no shell, so paths with
    spaces or non-ASCII names need no quoting)."""
    return [sys.executable, "-m", "lora_core.cli", "run", str(profile_path), "--events", "-",
            "--no-progress"]


class ProcessRunner:
    """Runs the real ``lora-train`` in a child process."""

    def __init__(self, kill_after_s: float = 60.0, extra_args: Sequence[str] = ()) -> None:
        self.kill_after_s = kill_after_s
        self.extra_args = list(extra_args)  # e.g. --set overrides, used by tests
        self._proc: asyncio.subprocess.Process | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self.stop_requested = False

    async def run(self, profile_path: Path, emit: OutputSink) -> int:
        env = dict(os.environ)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        self._proc = await asyncio.create_subprocess_exec(
            *train_command(profile_path), *self.extra_args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=_LINE_LIMIT_BYTES,
            # Its own session: a terminal's Ctrl+C reaches the app, which decides.
            start_new_session=True)
        assert self._proc.stdout is not None and self._proc.stderr is not None

        async def pump(stream: asyncio.StreamReader, events: bool) -> None:
            async for raw in stream:
                line = raw.decode("utf-8", "replace")
                emit(parse_line(line) if events else line.rstrip("\r\n"))

        try:
            await asyncio.gather(pump(self._proc.stdout, True), pump(self._proc.stderr, False))
            return await self._proc.wait()
        finally:
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            if self._proc.returncode is None:  # the worker was cancelled (app closing)
                self._kill()

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or self.stop_requested:
            return
        self.stop_requested = True
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        self._kill_timer = asyncio.get_running_loop().call_later(self.kill_after_s, self._kill)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


class FakeRunner:
    """Replays recorded events (and text lines) as if a child process said them."""

    def __init__(self, outputs: Sequence[Output], delay_s: float = 0.0,
                 exit_code: int | None = None) -> None:
        self.outputs = list(outputs)
        self.delay_s = delay_s
        self.exit_code = exit_code
        self.profile_path: Path | None = None
        self.stop_requested = False

    @classmethod
    def from_file(cls, path: Path, delay_s: float = 0.0) -> FakeRunner:
        return cls(list(read_events(path)), delay_s)

    async def run(self, profile_path: Path, emit: OutputSink) -> int:
        self.profile_path = profile_path
        for item in self.outputs:
            if self.stop_requested:
                return 130
            emit(item)
            await asyncio.sleep(self.delay_s)
        if self.exit_code is not None:
            return self.exit_code
        last = next((o for o in reversed(self.outputs) if isinstance(o, Event)), None)
        return 0 if isinstance(last, RunFinished) else 1 if isinstance(last, RunFailed) else 0

    def stop(self) -> None:
        self.stop_requested = True
