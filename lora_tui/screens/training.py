"""Training: follows a runner's event stream and shows it.

A progress bar (step / total, epoch), loss with its moving average as a live sparkline,
learning rate, it/s and ETA, the log in a scrollable pane, and every checkpoint, sample and
saved training state with its path. S asks to confirm, then stops the run cleanly (the
engine saves what was trained). A failure shows the engine's message and hint and the log
tail, in the app.

The screen follows one of three things (``mode``): a new run of a profile ("run"), a
``lora-train resume`` of a run folder ("resume"), or a run folder that is already going or
over ("attach": its events are replayed, then followed). Runs outlive the screen and the
app: Escape goes back and Ctrl+Q quits while training goes on in the background
(``lora_tui.runner``); the start screen lists it to attach again.

After a failure the screen offers the fix the engine found: L retries a CUDA out-of-memory
failure with the lighter settings the engine named (``RunFailed.retry_overrides``), C
continues a stopped, failed or crashed run from its last saved state.

The runner is awaited in a worker on the app's event loop: reading the child's output never
blocks the UI.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar, Sparkline, Static

from lora_core.durations import format_duration
from lora_core.errors import LoraError
from lora_core.events import (
    BestFileSaved,
    CheckpointSaved,
    EpochEnded,
    Event,
    GridSaved,
    LogLine,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SampleSaved,
    StateSaved,
    StepEnded,
    StoppedEarly,
    ValidationMeasured,
    WarningIssued,
)
from lora_core.runs.folders import PROFILE_FILE
from lora_core.runs.requests import SAMPLE_NOW, SAVE_NOW, request_action
from lora_core.runs.status import read_status
from lora_tui.dialogs.calibrate import CalibrateDialog
from lora_tui.dialogs.confirm import ConfirmDialog
from lora_tui.path_text import fit_line, shorten_path, split_name
from lora_tui.runner import Output, Runner
from lora_tui.widgets.path_log import PathLog

_LOSS_POINTS = 200  # the sparkline shows the most recent losses
_SAMPLE_COLUMNS = 32  # the preview's width in characters (and its height in pixel rows)
_TAIL_LINES = 12
MODES = ("run", "resume", "attach")
# Short (a toast at 80x24 is 40 columns wide and sits over the screen's corner), and said
# once (WizardApp.tell_background): the start screen lists the runs anyway.
BACKGROUND_NOTICE = "training goes on in the background: A on the start screen attaches"


def stop_notice(kill_after_s: float | None) -> str:
    """What S does, in the log: the wizard's words for it (the engine's own line names a
    terminal's Ctrl+C only when it runs in one)."""
    kill = ""
    if kill_after_s:
        minutes = kill_after_s / 60
        wait = (f"{minutes:g} minute{'s' if minutes != 1 else ''}" if minutes >= 1
                else f"{kill_after_s:g} seconds")
        kill = f" (a run still going {wait} later is killed)"
    return (f"stop asked: the run ends after this step and saves what was trained{kill}. "
            "Escape leaves it to end in the background; C continues it afterwards.")


def _name_in_folder(path: str, width: int) -> str:
    """A path under the panes, as markup: the file name first, whole, then its folder,
    shortened in the middle to keep the line one line (the panes need the rows at 80x24;
    ``lora-train status`` and the run folder have it in full)."""
    folder, name = split_name(path)
    if not folder:
        return escape(name)
    folder = shorten_path(folder, max(12, width - len(name) - 4))
    return f"[b]{escape(name)}[/b] in {escape(folder)}"


class TrainingScreen(Screen):
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("v", "save_now", "Save now"),
        Binding("p", "sample_now", "Sample now"),
        Binding("l", "retry_lighter", "Retry lighter"),
        Binding("k", "measure_what_fits", "Measure what fits"),
        Binding("c", "resume", "Continue"),
        Binding("escape", "leave", "Back"),
    ]

    @dataclass
    class RunOutput(Message):
        item: Output

    @dataclass
    class RunExited(Message):
        exit_code: int

    def __init__(self, target: Path, runner: Runner, mode: str = "run",
                 extra_args: Sequence[str] = ()) -> None:
        """``target``: the profile for "run", the run folder for "resume" and "attach";
        ``extra_args``: more ``lora-train`` arguments (``--set`` overrides)."""
        super().__init__(classes="training-screen")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.profile_path = Path(target)  # (the run folder for resume / attach)
        self.extra_args = list(extra_args)
        self.runner = runner
        self.state = "starting"  # starting, running, stopping, finished, stopped, failed
        self.run_dir: Path | None = Path(target) if mode != "run" else None
        self.states_saved = 0  # state_saved events since the last run_started
        self.resumed_from_step: int | None = None
        self.files: list[tuple[str, str]] = []  # (what it is, its path), as listed
        self.file_steps: dict[str, int] = {}  # a checkpoint's path -> its step
        self.validation: dict[int, float] = {}  # step -> validation loss
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.losses: deque[float] = deque(maxlen=_LOSS_POINTS)
        self.failure: RunFailed | None = None
        self.logged_phase: str | None = None  # the phase last written to the log
        self.last_step: StepEnded | None = None
        self._files_shown: list[tuple[str, str]] = []  # what the Files pane lists

    def compose(self) -> ComposeResult:
        verb = {"run": "Training", "resume": "Resuming", "attach": "Following"}[self.mode]
        first = "reading the run's events..." if self.mode == "attach" else \
            "starting lora-train..."
        yield Static(f"[b]{verb}[/b] {escape(str(self.profile_path))}", id="train-title")
        yield Static(first, id="train-phase")
        yield ProgressBar(total=None, show_eta=False, id="train-progress")
        yield Static("", id="train-stats")
        yield Sparkline([], id="train-loss")
        with Horizontal(id="train-panes"):
            yield PathLog(id="train-log", max_lines=2000)
            with Vertical(id="train-side"):
                # The preview takes at most half the pane (show_sample): the list of files
                # below it stays in sight at 80x24.
                yield Static("", id="train-sample")
                yield Static("[b]Files[/b]", id="train-files-title")  # stays as they scroll
                with VerticalScroll(id="train-files-box"):
                    yield Static("", id="train-files")
        yield Static("", id="train-result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#train-sample").display = False  # no empty line before a sample
        self.run_worker(self._follow(), exclusive=True, name="training")

    def show_sample(self, path: str) -> None:
        """The newest sample image, drawn with coloured half-height cells (two pixels per
        character), which every colour terminal shows, SSH included; the path is listed
        with the files either way."""
        from PIL import Image as PILImage  # only once a sample exists: not at start-up
        from rich_pixels import HalfcellRenderer, Pixels

        target = self.query_one("#train-sample", Static)
        target.display = True
        side = self.query_one("#train-side").content_size
        # As big as half the side pane allows (two pixel rows per line), the files list
        # below keeps the other half: at 80x24 about 14x14 pixels, at 120x40 the full 32x32.
        columns = max(8, min(_SAMPLE_COLUMNS, side.width or _SAMPLE_COLUMNS))
        pixel_rows = max(8, min(_SAMPLE_COLUMNS, 2 * ((side.height or 18) // 2)))
        try:
            with PILImage.open(path) as image:
                image.thumbnail((columns, pixel_rows))  # keeps the aspect ratio
                pixels = Pixels.from_image(image.convert("RGB"), renderer=HalfcellRenderer())
        except OSError as exc:  # the file may be gone or unreadable: say so, keep training
            target.update(f"[dim]cannot show {escape(path)}: {escape(str(exc))}[/dim]")
            return
        target.update(pixels)

    async def _follow(self) -> None:
        def emit(item: Output) -> None:
            self.post_message(self.RunOutput(item))

        try:
            if self.mode == "attach":
                code = await self.runner.attach(self.profile_path, emit)
            elif self.mode == "resume":
                code = await self.runner.resume(self.profile_path, emit, self.extra_args)
            else:
                code = await self.runner.run(self.profile_path, emit, self.extra_args)
        except LoraError as exc:  # not a run folder, an unreadable run.json
            emit(RunFailed(exc.message, exc.hint, ""))
            code = 1
        except OSError as exc:  # the child could not be started at all
            emit(RunFailed(f"lora-train could not start: {exc}",
                           "check that the project is installed in this Python environment",
                           ""))
            code = 1
        self.post_message(self.RunExited(code))

    # -- events ---------------------------------------------------------------------

    def on_training_screen_run_output(self, message: RunOutput) -> None:
        item = message.item
        if isinstance(item, str):
            self.tail.append(item)
            self._log.add(item)
        else:
            self.show_event(item)

    def show_event(self, event: Event) -> None:
        """Show one engine event (a dispatch table by event type; unknown ones are
        ignored, so an older app can follow a newer engine)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    @property
    def _log(self) -> PathLog:
        return self.query_one(PathLog)

    def _phase(self, markup: str) -> None:
        self.query_one("#train-phase", Static).update(markup)

    def _on_run_started(self, event: RunStarted) -> None:
        # (again after a stop or failure when a resume appended to the same stream)
        self.state, self.failure, self.states_saved = "running", None, 0
        self.resumed_from_step, self.logged_phase = None, None
        if event.run_dir:
            self.run_dir = Path(event.run_dir)
        steps = event.plan.get("max_train_steps")
        self.query_one(ProgressBar).update(total=steps, progress=0)
        self.query_one("#train-result", Static).update("")
        self._log.add("run folder:", event.run_dir or None)
        self.refresh_bindings()

    def _on_run_resumed(self, event: RunResumed) -> None:
        self.resumed_from_step = event.step
        self.query_one(ProgressBar).update(progress=event.step)
        # event.epoch counts the epochs done; the run goes on in the next one.
        where = f"step {event.step} (in epoch {event.epoch + 1})"
        self._phase(f"resumed from {where}")
        self._log.add(f"resumed from {where}:", event.state_path)

    def _on_state_saved(self, event: StateSaved) -> None:
        self.states_saved += 1
        self._log.add(f"training state saved at step {event.step}:", event.path)
        # Only the newest state matters (older ones are deleted): one line, replaced.
        self.files = [f for f in self.files if not f[0].startswith("state ")]
        self._add_file(f"state (step {event.step})", event.path, log_it=False)

    def _on_phase_changed(self, event: PhaseChanged) -> None:
        self._phase(escape(event.text))
        if event.phase != self.logged_phase:  # a phase once; its counts only on the line
            self.logged_phase = event.phase
            self._log.add(event.phase)

    def _on_step_ended(self, event: StepEnded) -> None:
        self.state = "running" if self.state == "starting" else self.state
        self.query_one(ProgressBar).update(total=event.total_steps, progress=event.step)
        self.losses.append(event.loss)
        self.query_one(Sparkline).data = list(self.losses)
        # "lr/unet" -> "unet": the line already says lr
        lrs = "  ".join(f"{name.removeprefix('lr/')} {value:.2e}"
                        for name, value in event.lrs.items())
        self.last_step = event
        self.query_one("#train-stats", Static).update(
            f"step {event.step}/{event.total_steps}  epoch {event.epoch}/"
            f"{event.total_epochs}  loss {event.loss:.4f}  avg {event.avg_loss:.4f}\n"
            f"lr {lrs}  {event.it_per_s:.2f} it/s  ETA {format_duration(event.eta_s)}")

    def _on_epoch_ended(self, event: EpochEnded) -> None:
        self._log.add(f"epoch {event.epoch}/{event.total_epochs} ended at step "
                      f"{event.step}, average loss {event.avg_loss:.4f}")

    def _on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        self.file_steps[event.path] = event.step
        self._add_file(f"{event.kind} checkpoint", event.path)

    def _on_validation(self, event: ValidationMeasured) -> None:
        self.validation[event.step] = event.loss
        where = f"epoch {event.epoch}" if event.kind == "epoch" else f"step {event.step}"
        self._log.add(f"validation loss {event.loss:.4f} at {where} ({event.images} "
                      f"held-out images; {event.divergence:+.4f} against training)")
        self._show_files(self.files)

    def _on_sample_saved(self, event: SampleSaved) -> None:
        self._add_file(f"sample {event.prompt_index} (step {event.step})", event.path)
        self.show_sample(event.path)

    def _on_best_file_saved(self, event: BestFileSaved) -> None:
        """One entry for the best file, replaced as a lower loss comes (as the file is)."""
        self.files = [f for f in self.files if f[1] != event.path]
        self._add_file(f"best (val {event.loss:.4f}, a copy of {Path(event.source).name})",
                       event.path)

    def _on_grid_saved(self, event: GridSaved) -> None:
        """The sample grid, listed once and drawn in the preview (after the samples)."""
        self.files = [f for f in self.files if f[1] != event.path]
        self._add_file(f"sample grid ({event.rows} prompts x {event.columns} points)",
                       event.path, log_it=False)
        self.show_sample(event.path)

    def _on_stopped_early(self, event: StoppedEarly) -> None:
        self._log.add(event.message)

    def _on_warning(self, event: WarningIssued) -> None:
        self.tail.append(f"warning: {event.message}")
        self._log.add(f"warning: {event.message}")

    def _on_log_line(self, event: LogLine) -> None:
        self.tail.append(event.message)
        self._log.add(event.message)

    def _on_run_failed(self, event: RunFailed) -> None:
        self.failure = event
        self._failed(event.message, event.hint, event.log_path)
        if event.kind == "crashed":
            self._phase("[b red]crashed[/b red]")

    _handlers = {RunStarted: _on_run_started, RunResumed: _on_run_resumed,
                 StateSaved: _on_state_saved, PhaseChanged: _on_phase_changed,
                 StepEnded: _on_step_ended, EpochEnded: _on_epoch_ended,
                 ValidationMeasured: _on_validation,
                 CheckpointSaved: _on_checkpoint_saved, SampleSaved: _on_sample_saved,
                 WarningIssued: _on_warning, LogLine: _on_log_line,
                 BestFileSaved: _on_best_file_saved, GridSaved: _on_grid_saved,
                 StoppedEarly: _on_stopped_early,
                 RunFinished: lambda self, event: self._finished(event),
                 RunFailed: _on_run_failed}

    def _add_file(self, what: str, path: str, log_it: bool = True) -> None:
        if log_it:
            self._log.add(f"{what}:", path)
        self.files.append((what, path))
        self._show_files(self.files)

    def _show_files(self, shown: list[tuple[str, str]]) -> None:
        """The files, each checkpoint with the validation loss measured at its step (when
        the run validates), the lowest marked: the one to keep. Each path fits the pane
        with its file name whole (``fit_line``); a resize lays them out again."""
        self._files_shown = shown

        def loss_of(path: str) -> float | None:
            step = self.file_steps.get(path)
            return self.validation.get(step) if step is not None else None

        losses = [loss for loss in (loss_of(path) for _, path in shown) if loss is not None]
        width = self.query_one("#train-files-box").scrollable_content_region.width or 30
        lines = []
        for what, path in shown:
            loss = loss_of(path)
            if loss is not None:
                what += f", val {loss:.4f}"
                if loss == min(losses) and len(losses) > 1:
                    what += " <- lowest"
            lines += [escape(line) for line in fit_line(f"{what}:", path, width)]
        self.query_one("#train-files", Static).update("\n".join(lines))
        box = self.query_one("#train-files-box")
        self.call_after_refresh(box.scroll_end, animate=False)  # the newest in sight

    def on_resize(self) -> None:
        self.call_after_refresh(lambda: self._show_files(self._files_shown))

    @property
    def _line_width(self) -> int:
        """The columns of a line under the panes."""
        return self.query_one("#train-result").content_size.width or self.app.size.width - 2

    def _settle(self) -> None:
        """The run is over: the bar stops pulsing (a run that failed before its first step
        never had a total) and the stats lose their ETA."""
        bar = self.query_one(ProgressBar)
        if bar.total is None:
            bar.update(total=1, progress=0)
        event = self.last_step
        if event is not None:
            self.query_one("#train-stats", Static).update(
                f"step {event.step}/{event.total_steps}  epoch {event.epoch}/"
                f"{event.total_epochs}  last loss {event.loss:.4f}  avg {event.avg_loss:.4f}")

    def _finished(self, event: RunFinished) -> None:
        self._settle()
        self.state = "stopped" if event.interrupted else "finished"
        word = "stopped; what was trained is saved" if event.interrupted else "finished"
        self.query_one("#train-phase", Static).update(f"[b]{word}[/b]")
        keys = "C: continue (resume) · " if self.resume_dir is not None else ""
        best = "" if not event.best_file or event.best_loss is None else (
            f"Best by validation loss ({event.best_loss:.4f}): "
            f"{_name_in_folder(event.best_file, self._line_width - 40)}\n")
        why = f"{escape(event.stop_reason)}\n" if event.stop_reason else ""
        self.query_one("#train-result", Static).update(
            f"[green]{word}[/green] after {event.steps} steps "
            f"({format_duration(event.seconds)}).\n{why}The LoRA: "
            f"{_name_in_folder(event.final_file, self._line_width - 10)}\n{best}"
            f"[dim]{keys}Escape: back · Ctrl+Q: quit[/dim]")
        what = {path: what for what, path in self.files}
        samples = [f for f in self.files if f[0].startswith(("sample ", "state ", "best ",
                                                              "sample grid"))]
        self._show_files([*((what.get(path, "file"), path) for path in event.files),
                          *samples])
        self.refresh_bindings()

    def _failed(self, message: str, hint: str, log_path: str | None) -> None:
        self._settle()
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
            text += f"\n[dim]log: {_name_in_folder(log_path, self._line_width - 5)}[/dim]"
        if tail:
            text += "\n[b]last lines of the log:[/b]\n" + escape("\n".join(tail))
        offers = []
        if self.retry_overrides:
            offers.append(f"L: retry with {self.failure.retry_description or 'lighter settings'}")
            offers.append("K: measure the settings that fit (lora-train calibrate)")
        if self.resume_dir is not None:
            offers.append("C: continue (resume)")
        if offers:
            text = f"[b]{escape(' · '.join(offers))}[/b]\n" + text
        self.query_one("#train-result", Static).update(text)
        self.refresh_bindings()

    def on_training_screen_run_exited(self, message: RunExited) -> None:
        if self.state in ("finished", "stopped", "failed"):
            self.refresh_bindings()  # the run is over: C may be on offer now
            return
        # The child ended without saying how: report its exit code and what it printed.
        self._failed(f"lora-train exited with code {message.exit_code} without finishing",
                     "the lines below are the last it printed", None)

    # -- what can be offered after the end -----------------------------------------------

    @property
    def retry_overrides(self) -> list[str]:
        """The engine's lighter ``--set`` overrides after an out-of-memory failure."""
        failure = self.failure
        if failure is None or failure.kind != "out_of_memory":
            return []
        return list(failure.retry_overrides)

    @property
    def resume_dir(self) -> Path | None:
        """The run folder to continue, when the run stopped or failed with a saved state."""
        if self.state == "failed" and self.failure is not None:
            resumable = self.failure.resumable and self.failure.run_dir
            return Path(self.failure.run_dir) if resumable else None
        if self.state == "stopped" and self.run_dir is not None:
            if self.states_saved:
                return self.run_dir
            try:
                return self.run_dir if read_status(self.run_dir).resumable else None
            except LoraError:
                return None
        return None

    # -- keys -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.state in ("starting", "running")
        if action in ("save_now", "sample_now"):
            return self.state == "running" and self.run_dir is not None
        if action in ("retry_lighter", "measure_what_fits"):
            return self.state == "failed" and bool(self.retry_overrides)
        if action == "resume":
            # Offered once the run is over; C on a run that cannot continue says why.
            return None if self.running else True
        return True

    def action_stop(self) -> None:
        self.app.push_screen(ConfirmDialog("Stop training? What was trained so far is saved."),
                             self._confirmed_stop)

    def action_save_now(self) -> None:
        self._ask(SAVE_NOW, "a LoRA file of this step is saved after it")

    def action_sample_now(self) -> None:
        self._ask(SAMPLE_NOW, "sample images are made after this step")

    def _ask(self, action: str, what: str) -> None:
        """Save now / sample now: the run takes the request after its current step
        (``lora-train signal`` does the same from another terminal)."""
        if self.run_dir is None or self.state != "running":
            return
        try:
            request_action(self.run_dir, action)
        except OSError as exc:
            self.notify(f"could not ask the run: {exc}", severity="error")
            return
        self.notify(what)

    def _confirmed_stop(self, yes: bool | None) -> None:
        if yes and self.running:
            self.state = "stopping"
            self.query_one("#train-phase", Static).update(
                "stopping after this step and saving...")
            self._log.add(stop_notice(getattr(self.runner, "kill_after_s", None)))
            self.runner.stop()
            self.refresh_bindings()

    def action_retry_lighter(self) -> None:
        """A new run of the same profile with the engine's lighter settings added."""
        overrides = self.retry_overrides
        if not overrides:
            return
        profile = self.profile_path
        extra = list(self.extra_args)
        if self.mode != "run":
            # The run folder's resolved profile: the exact settings that ran out of memory.
            profile, extra = (self.run_dir or self.profile_path) / PROFILE_FILE, []
        for override in overrides:
            extra += ["--set", override]
        self.app.start_training(profile, extra_args=extra,  # type: ignore[attr-defined]
                                replace=True)

    def _failed_profile(self) -> tuple[Path, list[str]]:
        """The profile that ran out of memory and the ``--set`` items it ran with."""
        if self.mode != "run":
            # The run folder's resolved profile: the exact settings that ran out of memory.
            return (self.run_dir or self.profile_path) / PROFILE_FILE, []
        extra, sets = list(self.extra_args), []
        while extra:
            flag = extra.pop(0)
            if flag == "--set" and extra:
                sets.append(extra.pop(0))
        return self.profile_path, sets

    def action_measure_what_fits(self) -> None:
        """After running out of memory: the settings that fit, each measured (the engine's
        ``calibrate``; the budget is the GPU's free memory), one key each; the one taken
        trains at once, as L does with the engine's one guess."""
        if not self.retry_overrides:
            return
        profile, sets = self._failed_profile()

        def chosen(more: list[str] | None) -> None:
            if more:
                extra = [arg for item in [*sets, *more] for arg in ("--set", item)]
                self.app.start_training(profile, extra_args=extra,  # type: ignore[attr-defined]
                                        replace=True)

        self.app.push_screen(CalibrateDialog(profile, overrides=sets), chosen)

    def action_resume(self) -> None:
        if self.running:
            return
        run_dir = self.resume_dir
        if run_dir is None:
            why = ("it finished: there is nothing left to train" if self.state == "finished"
                   else "it saved no training state to continue from")
            self.notify(f"this run cannot be continued: {why}", severity="warning")
            return
        self.app.resume_run(run_dir, replace=True)  # type: ignore[attr-defined]

    def action_leave(self) -> None:
        if self.running:
            # The worker is cancelled with the screen; the run itself goes on.
            self.app.tell_background()  # type: ignore[attr-defined]
        self.app.pop_screen()
