"""The engine's tool commands (``lora-train caption``, ``resize``) in a child process, read
as typed events (``--events -``, the protocol ``run`` speaks: lora_core/events.py), never as
text. Heavy work (onnxruntime, torch) stays out of the app's process.

Standard output carries the events; standard error is kept only for what no event says (an
internal error's one line), shown when the command fails without a CommandFailed event.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from lora_core.events import CommandFailed, Event
from lora_tui.runner import parse_line


def tool_command(command: str, *args: str) -> list[str]:
    """``lora-train <command> ARGS --events -`` with this interpreter."""
    return [sys.executable, "-m", "lora_core.cli", command, *args, "--events", "-"]


async def start_tool(argv: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@dataclass
class ToolOutcome:
    code: int
    events: list[Event] = field(default_factory=list)
    stderr: str = ""

    def last(self, kind: type[Event]) -> Event | None:
        return next((e for e in reversed(self.events) if isinstance(e, kind)), None)

    @property
    def failure(self) -> str:
        """Why the command failed: its CommandFailed message and hint, else the last lines
        it wrote on standard error."""
        failed = self.last(CommandFailed)
        if isinstance(failed, CommandFailed):
            return failed.message + (f"\n{failed.hint}" if failed.hint else "")
        return "\n".join(self.stderr.strip().splitlines()[-4:]) or f"exit code {self.code}"


async def follow_tool(process: asyncio.subprocess.Process,
                      on_event: Callable[[Event], None] | None = None) -> ToolOutcome:
    """Every event the command writes (``on_event`` sees each as it comes), until it ends."""
    assert process.stdout is not None and process.stderr is not None
    outcome = ToolOutcome(0)

    async def read_events() -> None:
        while line := (await process.stdout.readline()).decode(errors="replace"):
            event = parse_line(line)
            if isinstance(event, Event):
                outcome.events.append(event)
                if on_event is not None:
                    on_event(event)

    _, err = await asyncio.gather(read_events(), process.stderr.read())
    outcome.stderr = err.decode(errors="replace")
    outcome.code = await process.wait()
    return outcome
