"""Starts ``lora-train`` as a detached child process and follows its event stream; attaches
to runs already going.

The wizard never trains in its own process (it must not import torch). A run it starts must
outlive it: closing the terminal, an SSH drop or quitting the app may not stop training. So
the child gets

* its own session (``start_new_session``): no controlling terminal, so no SIGHUP when the
  terminal goes, and a Ctrl+C typed into the app never reaches it;
* stdin from /dev/null and stdout/stderr to a file, never a pipe: a pipe whose reader (the
  app) has gone makes the child's next write fail with SIGPIPE / EPIPE;
* ``--events FILE`` (a launch file in ``state_dir()/launches/``) instead of ``--events -``.

The runner follows those files by polling (every ``poll_s``, complete lines only; a run
writes a few lines a second, so polling costs nothing and needs no inotify). A daemon
thread waits on the child, so it is reaped the moment it exits even when no screen follows
it any more, and no zombie is left while the app runs. Cancelling the follower (a screen
closed, the app quitting) leaves the child alone.

Attaching to a run folder replays its ``events.jsonl`` from the start and follows it while
``run.json`` says the run is active; a run whose process is gone without a final event is
reported as crashed, with the log tail (``lora_core.runs.status``).

Stop sends SIGINT through :func:`~lora_core.runs.status.request_stop` (the engine
finishes its step, saves the LoRA and a resumable state, exits 130); a run still alive
``kill_after_s`` later is killed with its process group. That works for a run this app
started and for one it attached to: the run folder names the process.

:class:`FakeRunner` replays a recorded list of events with the same interface, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from lora_core.errors import LoraError
from lora_core.events import Event, RunFailed, RunFinished, RunStarted, event_from_json, read_events
from lora_core.paths import state_dir
from lora_core.runs.folders import EVENTS_FILE, LOG_FILE
from lora_core.runs.status import log_tail, read_status, request_stop

# What a runner hands to the screen: a parsed event, or a line of plain output.
Output = Event | str
OutputSink = Callable[[Output], None]

LAUNCHES_DIR = "launches"
# Launch files only matter while their run starts (the run folder holds the full record);
# they are deleted this long after their run was launched.
_KEEP_LAUNCHES_S = 7 * 24 * 3600
# One poll reads at most this much, so replaying a long run's stream keeps the UI responsive.
_READ_CHUNK_BYTES = 4 * 1024 * 1024
_EXIT_INTERRUPTED = 130


class Runner(Protocol):
    """Starts, resumes or follows one training run and reports what it says; stop() asks it
    to end cleanly. ``run_dir`` is known once the run has said where it writes."""

    run_dir: Path | None

    async def run(self, profile_path: Path, emit: OutputSink,
                  extra_args: Sequence[str] = ()) -> int:
        """Run to the end, calling ``emit`` for every event or output line; the exit code.
        ``extra_args`` are more ``lora-train run`` arguments (``--set`` overrides)."""
        ...

    async def resume(self, run_dir: Path, emit: OutputSink,
                     extra_args: Sequence[str] = ()) -> int:
        """``lora-train resume RUN_DIR``: continue a stopped, failed or crashed run."""
        ...

    async def attach(self, run_dir: Path, emit: OutputSink) -> int:
        """Replay a run folder's events, then follow them live until the run ends; 0 for a
        finished run, 130 for a stopped one, 1 for a failed or crashed one."""
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


def train_command(profile_path: Path, events_path: Path,
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The child's argv for a new run: this interpreter running lora_core's CLI (no shell, so
    paths with spaces or non-ASCII names need no quoting)."""
    return [sys.executable, "-m", "lora_core.cli", "run", str(profile_path),
            "--events", str(events_path), "--no-progress", *extra_args]


def resume_command(run_dir: Path, events_path: Path,
                   extra_args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "lora_core.cli", "resume", str(run_dir),
            "--events", str(events_path), "--no-progress", *extra_args]


def launches_dir() -> Path:
    return state_dir() / LAUNCHES_DIR


def new_launch_path() -> Path:
    """A fresh events file for one launch; its child's output goes next to it (``.out``).
    Launch files older than a week are deleted on the way."""
    folder = launches_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - _KEEP_LAUNCHES_S
    for old in folder.iterdir():
        with contextlib.suppress(OSError):  # another app may be deleting it too
            if old.stat().st_mtime < cutoff:
                old.unlink()
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"


class FileTail:
    """The complete lines appended to a file since the last read (the file may not exist
    yet). A last line without its newline is held back until it is complete, or until
    ``final`` says nothing more will come (a process killed in the middle of a write)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.more = False  # the last read stopped at the chunk limit, not at the end

    def read_lines(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(_READ_CHUNK_BYTES)
        except FileNotFoundError:
            data = b""
        self._offset += len(data)
        self.more = len(data) == _READ_CHUNK_BYTES
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final and not self.more and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


def _reap_in_background(proc: subprocess.Popen) -> None:
    """Wait for the child in a daemon thread: it is reaped as soon as it exits, whoever is
    (or is not) following it. A daemon thread never keeps the app from exiting."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def _exit_code_of(final: Event | None) -> int:
    if isinstance(final, RunFinished):
        return _EXIT_INTERRUPTED if final.interrupted else 0
    return 1


# Runners of this process whose child may still be training (for the message on quitting).
_LAUNCHED: list[ProcessRunner] = []


def background_runs() -> list[str]:
    """What this app launched that is still training: run folders (or the command's profile
    while its run folder is not known yet)."""
    return [str(r.run_dir or r.target) for r in _LAUNCHED if r.alive]


class ProcessRunner:
    """Runs the real ``lora-train`` in a detached child process, or follows a run folder."""

    def __init__(self, kill_after_s: float = 120.0, extra_args: Sequence[str] = (),
                 poll_s: float = 0.2) -> None:
        # A stop finishes the step and saves the LoRA and the state: on a big model that can
        # take a minute, so the escalation to SIGKILL waits longer than that.
        self.kill_after_s = kill_after_s
        self.extra_args = list(extra_args)  # e.g. --set overrides, used by tests
        self.poll_s = poll_s
        self.run_dir: Path | None = None
        self.target: Path | None = None
        self.events_path: Path | None = None
        self.stop_requested = False
        self._proc: subprocess.Popen | None = None
        self._kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def run(self, profile_path: Path, emit: OutputSink,
                  extra_args: Sequence[str] = ()) -> int:
        events = new_launch_path()
        self.target = Path(profile_path)
        return await self._launch(
            train_command(profile_path, events, [*self.extra_args, *extra_args]), events, emit)

    async def resume(self, run_dir: Path, emit: OutputSink,
                     extra_args: Sequence[str] = ()) -> int:
        events = new_launch_path()
        self.target = self.run_dir = Path(run_dir)
        return await self._launch(
            resume_command(run_dir, events, [*self.extra_args, *extra_args]), events, emit)

    async def _launch(self, argv: list[str], events_path: Path, emit: OutputSink) -> int:
        self.events_path = events_path
        out_path = events_path.with_suffix(".out")
        env = dict(os.environ)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        with open(os.devnull, "rb") as devnull, open(out_path, "ab") as out:
            self._proc = subprocess.Popen(argv, stdin=devnull, stdout=out,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, close_fds=True)
        _reap_in_background(self._proc)
        _LAUNCHED.append(self)
        events, output = FileTail(events_path), FileTail(out_path)

        def drain(final: bool) -> None:
            for line in events.read_lines(final):
                item = parse_line(line)
                if isinstance(item, RunStarted) and item.run_dir:
                    self.run_dir = Path(item.run_dir)  # what stop() and attach use
                if item != "":
                    emit(item)
            for line in output.read_lines(final):
                emit(line)

        # Cancelling this coroutine (the screen closed) ends the following, never the child.
        while self._proc.poll() is None:
            drain(False)
            await asyncio.sleep(0 if events.more else self.poll_s)
        drain(True)
        while events.more or output.more:
            drain(True)
        self._cancel_kill_timer()
        return self._proc.returncode

    async def attach(self, run_dir: Path, emit: OutputSink) -> int:
        run_dir = self.target = self.run_dir = Path(run_dir)
        events = FileTail(run_dir / EVENTS_FILE)
        final: Event | None = None
        while True:
            # The engine writes an event before the run.json that follows from it, so once
            # run.json says the run is over, reading to the end gets every event.
            status = read_status(run_dir)
            for line in events.read_lines(final=not status.active):
                item = parse_line(line)
                if isinstance(item, RunStarted):
                    final = None  # a resume appends a new run to the same stream
                elif isinstance(item, RunFinished | RunFailed):
                    final = item
                if item != "":
                    emit(item)
            if events.more:
                await asyncio.sleep(0)
                continue
            if not status.active:
                break
            await asyncio.sleep(self.poll_s)
        self._cancel_kill_timer()
        if final is None:  # gone without saying how: crashed (or killed)
            emit(crashed_event(run_dir, status.message, status.resumable))
        return _exit_code_of(final)

    def stop(self) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        if self._signal(force=False):
            self._kill_timer = asyncio.get_running_loop().call_later(
                self.kill_after_s, self._kill_if_still_going, self._status_pid())

    def _status_pid(self) -> int | None:
        """The pid run.json names for the run folder (None before it has one)."""
        if self.run_dir is None:
            return None
        try:
            return read_status(self.run_dir).pid
        except LoraError:
            return None

    def _kill_if_still_going(self, stopped_pid: int | None) -> None:
        """The kill after a stop, for the run that was asked to stop only: by then the run
        folder may hold the run C continued after S (same folder, another process), which
        the timer once killed in its middle ("exited with code -9")."""
        self._kill_timer = None
        ours = self._proc is not None and self._proc.poll() is None
        if ours or (stopped_pid is not None and self._status_pid() == stopped_pid):
            self._signal(True)

    def _signal(self, force: bool) -> bool:
        """SIGINT (or SIGKILL) to the run; True when a live process got it."""
        if self.run_dir is not None:
            try:
                if request_stop(read_status(self.run_dir), force=force):
                    return True
            except LoraError:
                pass  # no run.json yet: signal the child directly below
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        # Before the run has a run.json (the profile is still loading): our own child.
        with contextlib.suppress(ProcessLookupError):
            if force:
                os.killpg(proc.pid, signal.SIGKILL)  # it leads its own process group
            else:
                proc.send_signal(signal.SIGINT)
        return True

    def _cancel_kill_timer(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None


def crashed_event(run_dir: Path, message: str, resumable: bool) -> RunFailed:
    """What a run that died without a final event amounts to: a failure whose log is the
    run's train.log (its tail is the best clue: a kill, an OOM killer, a power cut)."""
    tail = log_tail(run_dir, 1)
    last = f" (last log line: {tail[-1]})" if tail else ""
    hint = ("continue it from its last saved state (C, or `lora-train resume "
            f"{run_dir}`)" if resumable else
            "no training state was saved yet: start it again from its profile")
    return RunFailed(f"the run crashed: {message or 'the training process is gone'}{last}",
                     hint, str(run_dir / LOG_FILE), kind="crashed", run_dir=str(run_dir),
                     resumable=resumable)


class FakeRunner:
    """Replays recorded events (and text lines) as if a child process said them; records
    every call (``calls``: ("run" | "resume" | "attach", path, extra args))."""

    def __init__(self, outputs: Sequence[Output], delay_s: float = 0.0,
                 exit_code: int | None = None, hold_s: float = 0.0) -> None:
        self.outputs = list(outputs)
        self.delay_s = delay_s
        self.hold_s = hold_s  # stay running this long after the last output (until stopped)
        self.exit_code = exit_code
        self.profile_path: Path | None = None
        self.run_dir: Path | None = None
        self.calls: list[tuple[str, Path, tuple[str, ...]]] = []
        self.stop_requested = False

    @classmethod
    def from_file(cls, path: Path, delay_s: float = 0.0) -> FakeRunner:
        return cls(list(read_events(path)), delay_s)

    async def run(self, profile_path: Path, emit: OutputSink,
                  extra_args: Sequence[str] = ()) -> int:
        self.profile_path = profile_path
        self.calls.append(("run", Path(profile_path), tuple(extra_args)))
        return await self._replay(emit)

    async def resume(self, run_dir: Path, emit: OutputSink,
                     extra_args: Sequence[str] = ()) -> int:
        self.run_dir = Path(run_dir)
        self.calls.append(("resume", Path(run_dir), tuple(extra_args)))
        return await self._replay(emit)

    async def attach(self, run_dir: Path, emit: OutputSink) -> int:
        self.run_dir = Path(run_dir)
        self.calls.append(("attach", Path(run_dir), ()))
        return await self._replay(emit)

    async def _replay(self, emit: OutputSink) -> int:
        for item in self.outputs:
            if self.stop_requested:
                return _EXIT_INTERRUPTED
            if isinstance(item, RunStarted) and item.run_dir:
                self.run_dir = Path(item.run_dir)
            emit(item)
            await asyncio.sleep(self.delay_s)
        held_until = asyncio.get_running_loop().time() + self.hold_s
        while not self.stop_requested and asyncio.get_running_loop().time() < held_until:
            await asyncio.sleep(0.05)
        if self.exit_code is not None:
            return self.exit_code
        last = next((o for o in reversed(self.outputs) if isinstance(o, Event)), None)
        return _exit_code_of(last) if isinstance(last, RunFinished | RunFailed) else 0

    def stop(self) -> None:
        self.stop_requested = True
