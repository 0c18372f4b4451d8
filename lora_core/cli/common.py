"""What every ``lora-train`` command shares: the log file, the event stream's sinks, the
stop flag that Ctrl+C sets, and how an error is printed (a message and a hint, never a
traceback: that goes to the log file)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from lora_core.errors import LoraError
from lora_core.events import CommandFailed, EventBus, JsonLinesSink, LogLine, WarningIssued
from lora_core.paths import state_dir

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a Unix tool killed by a closed pipe returns
log = logging.getLogger("lora_core")


def setup_logging() -> Path:
    """Log everything to a file; the screen gets only events and messages."""
    path = state_dir() / "lora-train.log"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        add_log_file(path)
    except OSError:
        root.addHandler(logging.NullHandler())  # an unwritable state folder must not stop us
    logging.captureWarnings(True)
    return path


def add_log_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class LogToEvents(logging.Handler):
    """The engine's own log warnings become warning events, info lines log events, so a UI
    following the stream sees them (errors arrive as run_failed instead)."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(logging.INFO)
        self.bus = bus

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.bus.emit(WarningIssued(record.getMessage()))
        elif record.levelno == logging.INFO:
            self.bus.emit(LogLine("info", record.getMessage()))


def print_error(exc: LoraError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


class StopFlag:
    """Ctrl+C (or SIGTERM) once: stop after the current step and save. Twice: abort.

    A second Ctrl+C that arrives while a file is being written (inside :meth:`saving`)
    waits for the write to finish, then aborts: a save is never cut in half."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._saving = 0
        self._abort_after_save = False
        self.on_first = None  # called once on the first stop request (run.json: stopping)
        self.done = False

    def __call__(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def saving(self):
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if self._saving == 0 and self._abort_after_save:
                self._abort_after_save = False
                raise KeyboardInterrupt

    def handle(self, signum=None, frame=None) -> None:
        if self.done:
            return  # the run is over and its files are written: a late Ctrl+C changes nothing
        if not self.event.is_set():
            self.event.set()
            if self.on_first is not None:
                self.on_first()
            # The key to abort is a terminal's: a run whose output goes to a file (the
            # wizard's, a detached one) says only what happens; its UI words its own keys.
            again = ("; press Ctrl+C again to abort without saving" if is_terminal(sys.stderr)
                     else "")
            print(f"\nstopping after this step and saving what was trained{again}",
                  file=sys.stderr, flush=True)
        elif self._saving:
            self._abort_after_save = True
            print("\nfinishing the file being written, then aborting", file=sys.stderr,
                  flush=True)
        else:
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without one, or closed
        return False


def open_event_sinks(bus: EventBus, events_arg: str | None) -> list[JsonLinesSink]:
    sinks = []
    if events_arg == "-":
        sinks.append(JsonLinesSink(sys.stdout))
    elif events_arg:
        stream = open(events_arg, "a", encoding="utf-8")  # noqa: SIM115 (closed by the sink)
        sinks.append(JsonLinesSink(stream, close=True))
    for sink in sinks:
        bus.add(sink)
    return sinks


@contextlib.contextmanager
def tool_events(events_arg: str | None) -> Iterator[EventBus]:
    """The event stream of a tool command (``--events FILE|-``, as ``run`` has); bad input
    becomes a CommandFailed event as well as the message on stderr."""
    bus = EventBus()
    sinks = open_event_sinks(bus, events_arg)
    try:
        yield bus
    except LoraError as exc:
        bus.emit(CommandFailed(exc.message, exc.hint or ""))
        raise
    finally:
        for sink in sinks:
            sink.close()
