"""A run's live status (``run.json`` in its run folder) and the list of runs on this machine.

``run.json`` says who is running the run (pid, process start time, host), how far it got
and how it ended. The engine rewrites it, atomically, when the run starts, whenever it saves
a resumable state, and when it ends; between those writes the step count comes from the tail
of ``events.jsonl``, so nothing is written per step.

A run whose ``run.json`` still says "running" but whose process is gone (a crash, a kill -9,
a reboot) is reported as "crashed": a marker left behind can never keep a run looking alive
(ai-toolkit #681). The process start time guards against a recycled pid.

Every run folder is also listed in ``state_dir()/runs.jsonl`` (one line per run, appended),
which is how ``lora-train status`` and the wizard find runs started from anywhere.

Torch-free: the wizard and ``lora-train status`` read this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core.atomic import atomic_write_bytes
from lora_core.errors import LoraError
from lora_core.events import (
    BestFileSaved,
    GridSaved,
    RunFailed,
    RunFinished,
    RunStarted,
    StateSaved,
    StepEnded,
    event_from_json,
)
from lora_core.paths import state_dir

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
INDEX_FILE = "runs.jsonl"
STATES_DIR = "states"
# States a run's record can be in. "crashed" is never written: it is what a reader concludes
# from "running" with the process gone.
ACTIVE = ("starting", "running", "stopping")
ENDED = ("finished", "stopped", "failed", "crashed")
_TAIL_BYTES = 256 * 1024


@dataclass
class RunStatus:
    """The content of ``run.json``, plus what a reader works out (``alive``, the last step)."""

    run_dir: str
    output_name: str
    status: str                     # starting, running, stopping, finished, stopped, failed
    pid: int
    host: str
    started_at: float
    updated_at: float
    profile: str = ""               # the run folder's resolved profile
    source_profile: str = ""        # the profile file the user started it from
    pid_started: str = ""           # the process's start time (Linux), against pid reuse
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    last_state: str = ""            # the newest resumable state folder, if any
    last_state_step: int = 0        # the step a resume continues from
    final_file: str = ""
    best_file: str = ""             # <output_name>-best.safetensors (with validation)
    best_validation_loss: float = 0.0  # its validation loss (meaningful with best_file)
    best_source: str = ""           # the saved file it copies
    grid_file: str = ""             # <output_name>_grid.png, the sample grid
    message: str = ""               # the error of a failed run, or why it stopped
    resumed_from: str = ""          # run folder this run continues (resumed elsewhere)
    resumes: int = 0                # how many times it was resumed
    # Several processes (lora_core.launch): the process group of the launcher and its
    # processes, which a forced stop kills too (pid is then the launching process).
    process_group: int = 0

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """Stopped early, failed or crashed, with a state to go on from."""
        return (self.status in ("stopped", "failed", "crashed") and bool(self.last_state)
                and Path(self.last_state).is_dir())


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or "" where there is
    no /proc. Two processes with the same pid never have the same start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int, started: str = "") -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if started:
        now = process_start_time(pid)
        if now and now != started:
            return False  # the pid was given to another process
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def run_pid() -> int:
    """The process that stands for the run: this one, or, when `lora-train run
    --num-processes` launched it, the launching process (lora_core.launch), which passes a
    stop on to every process; `lora-train stop` and the wizard signal this pid."""
    launcher = os.environ.get("LORA_TUI_LAUNCHER_PID", "")
    return int(launcher) if launcher.isdigit() and pid_alive(int(launcher)) else os.getpid()


def launched_group() -> int:
    """This process's group when lora_core.launch started it (0 otherwise)."""
    return os.getpgid(0) if os.environ.get("LORA_TUI_LAUNCHER_PID", "").isdigit() else 0


def new_status(run_dir: Path, output_name: str, profile: Path, source_profile: Path | None,
               *, total_steps: int, total_epochs: int) -> RunStatus:
    pid = run_pid()
    now = time.time()
    return RunStatus(run_dir=str(run_dir), output_name=output_name, status="starting",
                     pid=pid, host=socket.gethostname(), started_at=now, updated_at=now,
                     process_group=launched_group(),
                     profile=str(profile),
                     source_profile=str(Path(source_profile).resolve()) if source_profile else "",
                     pid_started=process_start_time(pid), total_steps=total_steps,
                     total_epochs=total_epochs)


def write_status(status: RunStatus) -> None:
    """Rewrite ``run.json`` atomically. A failure here (disk full) must not end training:
    the status is a convenience, the events and states are the record."""
    status.updated_at = time.time()
    data = {k: v for k, v in dataclasses.asdict(status).items()}
    with contextlib.suppress(LoraError):
        atomic_write_bytes(status.path / RUN_FILE, json.dumps(data, indent=2).encode())


def read_status(run_dir: Path) -> RunStatus:
    """The run's status as it is now: "running" with its process gone reads as "crashed",
    and the step is the newest one in the event stream."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        status = _status_from(data, path)
    except FileNotFoundError:
        raise LoraError(f"{run_dir} is not a run folder: it has no {RUN_FILE}",
                        "give the folder under <output_dir>/runs/ that the run printed at its "
                        "start (`lora-train status` lists them)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise LoraError(f"{path} is unreadable: {exc}",
                        "the run folder is damaged; its LoRA files are still usable") from None
    status.run_dir = str(run_dir)
    last = last_step_event(run_dir / "events.jsonl")
    if last is not None and last.step >= status.step:
        status.step, status.total_steps = last.step, last.total_steps
        status.epoch, status.total_epochs = last.epoch, last.total_epochs
    # A run on another host (a shared disk) cannot be checked from here: shown as written.
    if status.active and status.host == socket.gethostname() \
            and not pid_alive(status.pid, status.pid_started):
        status.status = "crashed"
        status.message = status.message or "the training process is gone"
    return status


_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float)}


def _status_from(data: object, path: Path) -> RunStatus:
    """The RunStatus ``data`` (parsed run.json) holds; LoraError naming the file and the
    field when it is not an object of fields of the right types (a hand edit, a torn disk)."""
    hint = "the run folder is damaged; its LoRA files are still usable"
    if not isinstance(data, dict):
        raise LoraError(f"{path} is unreadable: it holds {type(data).__name__}, not a JSON "
                        "object", hint)
    values = {}
    for f in dataclasses.fields(RunStatus):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise LoraError(f"{path} is unreadable: it has no {f.name!r}", hint)
            continue
        value = data[f.name]
        if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[str(f.type)]):
            raise LoraError(f"{path} is unreadable: {f.name!r} is {value!r}", hint)
        values[f.name] = value
    return RunStatus(**values)


def unreadable_status(run_dir: Path, message: str) -> RunStatus:
    """A stand-in for a run whose run.json cannot be read, so a list can still show it."""
    try:
        updated = run_dir.stat().st_mtime
    except OSError:
        updated = 0.0
    return RunStatus(str(run_dir), run_dir.name, "unreadable", 0, "", updated, updated,
                     message=message)


def last_step_event(events_path: Path) -> StepEnded | None:
    """The newest step event in an event file, reading only its tail."""
    try:
        with open(events_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"step_ended"' in line:
            try:
                event = event_from_json(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn first line of the tail
            if isinstance(event, StepEnded):
                return event
    return None


def log_tail(run_dir: Path, num_lines: int = 10, tracebacks: bool = True) -> list[str]:
    """The last lines of the run's ``train.log`` (for a crashed or failed run);
    ``tracebacks=False`` leaves out Python tracebacks (a person reads the message; the
    traceback stays in the log for a bug report)."""
    try:
        with open(Path(run_dir) / "train.log", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = text.splitlines()
    if not tracebacks:
        lines = _without_tracebacks(lines)
    return lines[-num_lines:]


def _without_tracebacks(lines: list[str]) -> list[str]:
    """Drop each "Traceback (most recent call last):" block up to (not including) the
    exception line that ends it, and the chained-exception notes between blocks."""
    kept, inside = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            inside = True
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        if line.startswith(("During handling of the above exception",
                            "The above exception was the direct cause")):
            continue
        inside = False
        kept.append(line)
    return kept


def register_run(run_dir: Path) -> None:
    """Add a run folder to this machine's list of runs."""
    line = json.dumps({"run_dir": str(run_dir), "registered_at": time.time()}) + "\n"
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
        # One short append per run: atomic for lines under PIPE_BUF on local file systems.
        with open(state_dir() / INDEX_FILE, "a", encoding="utf-8") as fh:
            fh.write(line)
    except OSError:
        pass  # the list is a convenience; a read-only state folder must not stop training


def list_runs(limit: int | None = None, *, unreadable: bool = False) -> list[RunStatus]:
    """Runs on this machine, newest first; folders deleted since are left out. A run folder
    whose run.json cannot be read is left out too, or with ``unreadable`` listed with the
    state "unreadable" and the reason as its message."""
    try:
        lines = (state_dir() / INDEX_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    seen: set[str] = set()
    runs: list[RunStatus] = []
    for line in reversed(lines):
        try:
            run_dir = json.loads(line)["run_dir"]
        except (ValueError, KeyError, TypeError):
            continue
        if run_dir in seen:
            continue
        seen.add(run_dir)
        try:
            status = read_status(Path(run_dir))
        except LoraError as exc:
            if not unreadable or not (Path(run_dir) / RUN_FILE).exists():
                continue
            status = unreadable_status(Path(run_dir), exc.message)
        # Runs still going are always listed; the limit is on the others.
        if status.active or limit is None or sum(not r.active for r in runs) < limit:
            runs.append(status)
    return runs


def request_stop(status: RunStatus, *, force: bool = False) -> bool:
    """Ask a run to stop: SIGINT (finish the step, save, exit), or SIGKILL with ``force``.

    SIGINT goes to the training process only (its data-loader workers must not see it);
    SIGKILL goes to its whole process group when it leads one (the wizard starts runs in
    their own session), so no worker is left behind. False when the run is not alive on
    this machine."""
    if not status.active or status.host != socket.gethostname() \
            or not pid_alive(status.pid, status.pid_started):
        return False
    try:
        if force and status.process_group > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(status.process_group, signal.SIGKILL)  # launched processes
        if force and os.getpgid(status.pid) == status.pid:
            os.killpg(status.pid, signal.SIGKILL)
        else:
            os.kill(status.pid, signal.SIGKILL if force else signal.SIGINT)
    except ProcessLookupError:
        return False
    return True


class StatusRecorder:
    """An event sink that keeps ``run.json`` current: running once the run starts, the
    newest state when one is saved, and how the run ended."""

    def __init__(self, status: RunStatus) -> None:
        self.status = status

    def __call__(self, event) -> None:
        status = self.status
        if isinstance(event, StepEnded):
            status.step, status.epoch = event.step, event.epoch  # written with the next write
            return
        if isinstance(event, RunStarted):
            status.status = "running"
        elif isinstance(event, StateSaved):
            status.last_state, status.step = event.path, event.step
            status.last_state_step = event.step
        elif isinstance(event, BestFileSaved):
            status.best_file, status.best_validation_loss = event.path, event.loss
            status.best_source = event.source
        elif isinstance(event, GridSaved):
            status.grid_file = event.path
        elif isinstance(event, RunFinished):
            status.status = "stopped" if event.interrupted else "finished"
            status.final_file, status.step = event.final_file, event.steps
            if event.stop_reason:
                status.message = event.stop_reason
            if status.last_state and not Path(status.last_state).is_dir():
                status.last_state = ""  # a finished run's states are deleted
        elif isinstance(event, RunFailed):
            status.status, status.message = "failed", event.message
        else:
            return
        write_status(status)

    def mark_stopping(self) -> None:
        """A stop was asked for (Ctrl+C, SIGTERM, a UI's Stop): every UI shows it."""
        if self.status.active:
            self.status.status = "stopping"
            write_status(self.status)


def lock_run(run_dir: Path):
    """Hold the run folder's lock for as long as this process lives (the OS releases it when
    the process ends, kill -9 included), so two processes never train into one folder.
    Returns the open lock file, or None where the OS has no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(Path(run_dir) / LOCK_FILE, "a")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise LoraError(f"another process is training in {run_dir}",
                        "follow it with `lora-tui`, or stop it with `lora-train stop "
                        f"{run_dir}` before resuming") from None
    return handle
