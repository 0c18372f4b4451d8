"""Training: follows a runner's event stream and shows it.

A progress bar (step / total, epoch), loss with its moving average as a live sparkline,
learning rate, it/s and ETA, the log in a scrollable pane, and every checkpoint and sample
with its path. S asks to confirm, then stops the run cleanly (the engine saves what was
trained). A failure shows the engine's message and hint and the log tail, in the app.

The runner is awaited in a worker on the app's event loop: reading the child's output never
blocks the UI.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, RichLog, Sparkline, Static

from lora_core.events import (
    CheckpointSaved,
    EpochEnded,
    Event,
    LogLine,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    SampleSaved,
    StepEnded,
    WarningIssued,
)
from lora_tui.dialogs.confirm import ConfirmDialog
from lora_tui.runner import Output, Runner

_LOSS_POINTS = 200  # the sparkline shows the most recent losses
_SAMPLE_COLUMNS = 32  # the preview's width in characters (and its height in pixel rows)
_TAIL_LINES = 12


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainingScreen(Screen):
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("escape", "leave", "Back"),
    ]

    @dataclass
    class RunOutput(Message):
        item: Output

    @dataclass
    class RunExited(Message):
        exit_code: int

    def __init__(self, profile_path: Path, runner: Runner) -> None:
        super().__init__(classes="training-screen")
        self.profile_path = profile_path
        self.runner = runner
        self.state = "starting"  # starting, running, stopping, finished, stopped, failed
        self.files: list[str] = []
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.losses: deque[float] = deque(maxlen=_LOSS_POINTS)
        self.failure: RunFailed | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"[b]Training[/b] {escape(str(self.profile_path))}", id="train-title")
        yield Static("starting lora-train...", id="train-phase")
        yield ProgressBar(total=None, show_eta=False, id="train-progress")
        yield Static("", id="train-stats")
        yield Sparkline([], id="train-loss")
        with Horizontal(id="train-panes"):
            yield RichLog(id="train-log", wrap=True, markup=False, max_lines=2000)
            with Vertical(id="train-side"):
                yield Static("[b]Files[/b]", id="train-files")
                yield Static("", id="train-sample")
        yield Static("", id="train-result")
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._follow(), exclusive=True, name="training")

    def show_sample(self, path: str) -> None:
        """The newest sample image, drawn with coloured half-height cells (two pixels per
        character), which every colour terminal shows, SSH included; the path is listed
        with the files either way."""
        from PIL import Image as PILImage  # only once a sample exists: not at start-up
        from rich_pixels import HalfcellRenderer, Pixels

        target = self.query_one("#train-sample", Static)
        try:
            with PILImage.open(path) as image:
                image.thumbnail((_SAMPLE_COLUMNS, _SAMPLE_COLUMNS))  # keeps the aspect ratio
                pixels = Pixels.from_image(image.convert("RGB"), renderer=HalfcellRenderer())
        except OSError as exc:  # the file may be gone or unreadable: say so, keep training
            target.update(f"[dim]cannot show {escape(path)}: {escape(str(exc))}[/dim]")
            return
        target.update(pixels)

    async def _follow(self) -> None:
        code = await self.runner.run(self.profile_path,
                                     lambda item: self.post_message(self.RunOutput(item)))
        self.post_message(self.RunExited(code))

    # -- events ---------------------------------------------------------------------

    def on_training_screen_run_output(self, message: RunOutput) -> None:
        item = message.item
        if isinstance(item, str):
            self.tail.append(item)
            self.query_one(RichLog).write(item)
        else:
            self.show_event(item)

    def show_event(self, event: Event) -> None:
        log = self.query_one(RichLog)
        phase = self.query_one("#train-phase", Static)
        if isinstance(event, RunStarted):
            self.state = "running"
            steps = event.plan.get("max_train_steps")
            self.query_one(ProgressBar).update(total=steps)
            log.write(f"run folder: {event.run_dir}")
        elif isinstance(event, PhaseChanged):
            phase.update(escape(event.phase))
            log.write(event.phase)
        elif isinstance(event, StepEnded):
            self.state = "running" if self.state == "starting" else self.state
            self.query_one(ProgressBar).update(total=event.total_steps, progress=event.step)
            self.losses.append(event.loss)
            self.query_one(Sparkline).data = list(self.losses)
            lrs = "  ".join(f"{name} {value:.2e}" for name, value in event.lrs.items())
            self.query_one("#train-stats", Static).update(
                f"step {event.step}/{event.total_steps}  epoch {event.epoch}/"
                f"{event.total_epochs}  loss {event.loss:.4f}  avg {event.avg_loss:.4f}\n"
                f"lr {lrs}  {event.it_per_s:.2f} it/s  ETA {format_duration(event.eta_s)}")
        elif isinstance(event, EpochEnded):
            log.write(f"epoch {event.epoch}/{event.total_epochs} ended at step {event.step}, "
                      f"average loss {event.avg_loss:.4f}")
        elif isinstance(event, CheckpointSaved):
            self._add_file(f"{event.kind} checkpoint: {event.path}")
        elif isinstance(event, SampleSaved):
            self._add_file(f"sample {event.prompt_index} (step {event.step}): {event.path}")
            self.show_sample(event.path)
        elif isinstance(event, WarningIssued):
            self.tail.append(f"warning: {event.message}")
            log.write(f"warning: {event.message}")
        elif isinstance(event, LogLine):
            self.tail.append(event.message)
            log.write(event.message)
        elif isinstance(event, RunFinished):
            self._finished(event)
        elif isinstance(event, RunFailed):
            self.failure = event
            self._failed(event.message, event.hint, event.log_path)

    def _add_file(self, line: str) -> None:
        self.query_one(RichLog).write(line)
        self.files.append(line)
        self.query_one("#train-files", Static).update(
            "[b]Files[/b]\n" + "\n".join(escape(f) for f in self.files))

    def _finished(self, event: RunFinished) -> None:
        self.state = "stopped" if event.interrupted else "finished"
        word = "stopped; what was trained is saved" if event.interrupted else "finished"
        self.query_one("#train-phase", Static).update(f"[b]{word}[/b]")
        self.query_one("#train-result", Static).update(
            f"[green]{word}[/green] after {event.steps} steps "
            f"({format_duration(event.seconds)}). The LoRA: {escape(event.final_file)}\n"
            "[dim]Escape: back to the review · Ctrl+Q: quit[/dim]")
        samples = [f for f in self.files if f.startswith("sample ")]
        self.query_one("#train-files", Static).update(
            "[b]Files[/b]\n" + "\n".join(escape(f) for f in [*event.files, *samples]))
        self.refresh_bindings()

    def _failed(self, message: str, hint: str, log_path: str | None) -> None:
        self.state = "failed"
        tail = list(self.tail)
        if log_path and Path(log_path).is_file():
            try:
                lines = Path(log_path).read_text(encoding="utf-8", errors="replace")
                tail = lines.splitlines()[-_TAIL_LINES:]
            except OSError:
                pass
        self.query_one("#train-phase", Static).update("[b red]failed[/b red]")
        text = f"[b red]error:[/b red] {escape(message)}"
        if hint:
            text += f"\n[b]hint:[/b] {escape(hint)}"
        if log_path:
            text += f"\n[dim]log: {escape(log_path)}[/dim]"
        if tail:
            text += "\n[b]last lines of the log:[/b]\n" + escape("\n".join(tail))
        self.query_one("#train-result", Static).update(text)
        self.refresh_bindings()

    def on_training_screen_run_exited(self, message: RunExited) -> None:
        if self.state in ("finished", "stopped", "failed"):
            return
        # The child ended without saying how: report its exit code and what it printed.
        self._failed(f"lora-train exited with code {message.exit_code} without finishing",
                     "the lines below are the last it printed", None)

    # -- keys -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.state in ("starting", "running")
        if action == "leave":
            return not self.running
        return True

    def action_stop(self) -> None:
        self.app.push_screen(ConfirmDialog("Stop training? What was trained so far is saved."),
                             self._confirmed_stop)

    def _confirmed_stop(self, yes: bool | None) -> None:
        if yes and self.running:
            self.state = "stopping"
            self.query_one("#train-phase", Static).update(
                "stopping after this step and saving...")
            self.runner.stop()
            self.refresh_bindings()

    def action_leave(self) -> None:
        self.app.pop_screen()
