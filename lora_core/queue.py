"""`lora-train queue`: run several profiles one after another.

Each profile runs in its own ``lora-train run`` child process, so one run's memory (and
any CUDA state) is gone before the next starts and a crash cannot take the queue down. A
failed profile stops the queue unless ``--continue-on-error``; a Ctrl+C stops it always.
The queue ends with a table of what succeeded and where its files are.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lora_core.events import RunFailed, RunFinished, RunStarted, read_events

EXIT_INTERRUPTED = 130


@dataclass
class QueueItem:
    profile: Path
    status: str = "waiting"  # waiting, done, failed, stopped, skipped
    files: list[str] = field(default_factory=list)
    message: str = ""
    run_dir: str = ""
    final_file: str = ""


def run_one(item: QueueItem) -> int:
    with tempfile.TemporaryDirectory(prefix="lora-queue-") as tmp:
        events_path = Path(tmp) / "events.jsonl"
        cmd = [sys.executable, "-m", "lora_core.cli", "run", str(item.profile),
               "--events", str(events_path)]
        child = subprocess.Popen(cmd)
        code = wait_through_ctrl_c(child)
        events = list(read_events(events_path)) if events_path.exists() else []
    for event in events:
        if isinstance(event, RunStarted):
            item.run_dir = event.run_dir
        elif isinstance(event, RunFinished):
            item.files = event.files
            item.final_file = event.final_file
        elif isinstance(event, RunFailed):
            item.message = event.message
    if code == 0:
        item.status = "done"
    elif code == EXIT_INTERRUPTED:
        item.status = "stopped"
        item.message = item.message or "stopped with Ctrl+C"
    else:
        item.status = "failed"
        item.message = item.message or f"exited with code {code} (see the messages above)"
    return code


def wait_through_ctrl_c(child: subprocess.Popen) -> int:
    """Wait for the child even when Ctrl+C arrives: the terminal sends it to the child too,
    which stops after its step and saves. Killing it here would lose that save."""
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def render_table(items: list[QueueItem]) -> str:
    width = max(len(str(i.profile)) for i in items)
    lines = [f"{'profile':<{width}}  status   result"]
    for item in items:
        if item.status == "done":
            result = item.final_file or "(no file)"
        else:
            result = " ".join(item.message.replace("\n  - ", " ").split())
        lines.append(f"{str(item.profile):<{width}}  {item.status:<7}  {result}")
    return "\n".join(lines)


def run_queue(profiles: list[Path], continue_on_error: bool) -> int:
    items = [QueueItem(p) for p in profiles]
    for index, item in enumerate(items):
        print(f"\n=== [{index + 1}/{len(items)}] {item.profile}", file=sys.stderr, flush=True)
        code = run_one(item)
        if code == EXIT_INTERRUPTED or (code != 0 and not continue_on_error):
            for later in items[index + 1:]:
                later.status = "skipped"
                later.message = "not run: the queue stopped"
            break
    print("\n" + render_table(items))
    return 0 if all(i.status == "done" for i in items) else 1
