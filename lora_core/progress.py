"""Rendering the event stream for a person at a terminal.

On a TTY a tqdm progress bar shows step, loss, average loss, learning rate, it/s and ETA;
elsewhere (logs, CI) plain lines are printed at phases, warnings, checkpoints and every 10 %
of the steps, so a log file stays readable. Output goes to stderr, leaving stdout free for
``--events -``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from lora_core.durations import format_duration
from lora_core.events import (
    BestFileSaved,
    CheckpointSaved,
    EpochEnded,
    Event,
    GridSaved,
    NotificationSent,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    SampleSaved,
    StepEnded,
    StoppedEarly,
    ValidationMeasured,
    WarningIssued,
)


class ProgressPrinter:
    """An event sink that draws progress for a person."""

    def __init__(self, stream: TextIO | None = None, use_bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if use_bar is None else use_bar
        self.bar = None
        self.next_report = 0
        self.phases_said: set[str] = set()

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            plan = event.plan
            self._line(f"run folder: {event.run_dir} (log: {event.log_path})")
            self._line(f"training {event.output_name}: {plan.get('num_train_images')} train "
                       f"images with repeats, {plan.get('num_reg_images')} reg, "
                       f"{plan.get('steps_per_epoch')} steps per epoch, "
                       f"{plan.get('num_epochs')} epochs, {plan.get('max_train_steps')} steps, "
                       f"seed {plan.get('seed')}")
        elif isinstance(event, PhaseChanged):
            # Each phase once: not its counts, not "training" again after a save.
            if not event.phase.startswith("saving") and event.phase not in self.phases_said:
                self.phases_said.add(event.phase)
                self._line(f"{event.phase}...")
        elif isinstance(event, WarningIssued):
            self._line(f"warning: {event.message}")
        elif isinstance(event, StepEnded):
            self._step(event)
        elif isinstance(event, EpochEnded):
            self._line(f"epoch {event.epoch}/{event.total_epochs} done at step {event.step}, "
                       f"average loss {event.avg_loss:.4f}")
        elif isinstance(event, ValidationMeasured):
            where = f"epoch {event.epoch}" if event.kind == "epoch" else f"step {event.step}"
            self._line(f"validation loss {event.loss:.4f} at {where} "
                       f"({event.divergence:+.4f} against training)")
        elif isinstance(event, CheckpointSaved):
            self._line(f"saved {event.path}")
        elif isinstance(event, SampleSaved):
            self._line(f"sample {event.prompt_index} at step {event.step}: {event.path}")
        elif isinstance(event, BestFileSaved):
            self._line(f"best so far (validation loss {event.loss:.4f}): {event.path}")
        elif isinstance(event, GridSaved):
            self._line(f"sample grid: {event.path}")
        elif isinstance(event, StoppedEarly):
            self._line(event.message)
        elif isinstance(event, NotificationSent):
            self._line(f"notified {event.channel} {event.destination} ({event.status})")
        elif isinstance(event, RunFinished):
            self._close()
            state = "stopped early" if event.interrupted else "finished"
            self._line(f"{state} after {event.steps} steps in "
                       f"{format_duration(event.seconds)}")
            if event.best_file and event.best_loss is not None:
                self._line(f"best file: {event.best_file} (validation loss "
                           f"{event.best_loss:.4f})")
        elif isinstance(event, RunFailed):
            self._close()

    def _step(self, event: StepEnded) -> None:
        lr = next(iter(event.lrs.values()), 0.0)
        if self.use_bar:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total_steps, file=self.stream, unit="step",
                                dynamic_ncols=True, initial=event.step - 1)
            self.bar.set_postfix_str(f"epoch {event.epoch}/{event.total_epochs} "
                                     f"loss {event.loss:.4f} avg {event.avg_loss:.4f} "
                                     f"lr {lr:.2e}", refresh=False)
            self.bar.update(event.step - self.bar.n)
            return
        if event.step >= self.next_report or event.step == event.total_steps:
            self._line(f"step {event.step}/{event.total_steps} epoch {event.epoch}/"
                       f"{event.total_epochs} loss {event.loss:.4f} avg {event.avg_loss:.4f} "
                       f"lr {lr:.2e} {event.it_per_s:.2f} it/s "
                       f"eta {format_duration(event.eta_s)}")
            self.next_report = event.step + max(1, event.total_steps // 10)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
