"""The engine's event protocol: typed, past-tense events serialised one JSON object per line.

Events carry plain values and file paths, never tensors. The CLI renders them as a progress
bar, the wizard as widgets, tests collect them, and the copy written to the run folder lets
a UI re-attach to a run it did not start. Each event has a ``type`` field naming its class
and a ``time`` (unix seconds). No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO


@dataclass
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_json(self) -> str:
        data = {"type": self.type, **dataclasses.asdict(self)}
        return json.dumps(data, ensure_ascii=False, default=str)


@dataclass
class RunStarted(Event):
    """The run began; ``plan`` is the full plan (images, repeats, buckets, steps)."""

    type: ClassVar[str] = "run_started"
    run_dir: str
    profile_path: str
    output_name: str
    log_path: str
    plan: dict[str, Any]


@dataclass
class PhaseChanged(Event):
    """A slow phase began, e.g. "loading model" or "training", or moved on: ``done`` of
    ``total`` items ("caching latents", 40 of 120). A UI shows the counts where the phase is
    shown and logs a phase once, not every count. After a save or preview images mid-run,
    "training" is said again before the next step."""

    type: ClassVar[str] = "phase_changed"
    phase: str
    done: int | None = None
    total: int | None = None

    @property
    def text(self) -> str:
        """The phase with its count, for a status line."""
        return self.phase if self.total is None else f"{self.phase} {self.done}/{self.total}"


@dataclass
class StepEnded(Event):
    type: ClassVar[str] = "step_ended"
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float
    avg_loss: float
    lrs: dict[str, float]
    it_per_s: float
    eta_s: float
    # Other per-step measurements, e.g. max_norm/keys_scaled with scale_weight_norms.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochEnded(Event):
    type: ClassVar[str] = "epoch_ended"
    epoch: int
    total_epochs: int
    step: int
    avg_loss: float


@dataclass
class ValidationMeasured(Event):
    """Validation loss of the held-out images (``validation_split``), after optimizer step
    ``step``: at an epoch's end (``kind`` "epoch", ``epoch`` the epoch that ended) or every
    validate_every_n_steps (``kind`` "step"). ``divergence``: validation minus training loss
    (the epoch's average, or the moving average for a step)."""

    type: ClassVar[str] = "validation_measured"
    step: int
    epoch: int
    kind: str  # "epoch" or "step"
    loss: float
    divergence: float
    images: int


@dataclass
class CheckpointSaved(Event):
    type: ClassVar[str] = "checkpoint_saved"
    path: str
    step: int
    epoch: int
    kind: str  # "epoch", "step", "final" or "interrupted"


@dataclass
class BestFileSaved(Event):
    """``path`` (``<output_name>-best.safetensors``) now holds the saved file ``source``,
    the one with the lowest validation loss so far (``loss``, measured at its save point)."""

    type: ClassVar[str] = "best_file_saved"
    path: str
    source: str
    step: int
    epoch: int
    loss: float


@dataclass
class StoppedEarly(Event):
    """``early_stopping_patience`` validations in a row brought no new lowest loss: the run
    ends now, as a finished run (``best_step`` / ``best_loss``: the best so far)."""

    type: ClassVar[str] = "stopped_early"
    step: int
    epoch: int
    patience: int
    best_step: int
    best_loss: float
    message: str


@dataclass
class GridSaved(Event):
    """The sample grid (one row per prompt, one column per sampling point) was rewritten."""

    type: ClassVar[str] = "grid_saved"
    path: str
    rows: int
    columns: int


@dataclass
class NotificationSent(Event):
    """A ``[notify]`` channel was told how the run ended (``destination`` is safe to show:
    a command, or a webhook's scheme and host only)."""

    type: ClassVar[str] = "notification_sent"
    channel: str  # "command" or "webhook"
    status: str   # finished, stopped or failed
    destination: str


@dataclass
class StateSaved(Event):
    """A resumable training state was written (``lora-train resume`` continues from it)."""

    type: ClassVar[str] = "state_saved"
    path: str
    step: int
    epoch: int


@dataclass
class RunResumed(Event):
    """The run continues from a saved state (sent right after its ``run_started``)."""

    type: ClassVar[str] = "run_resumed"
    state_path: str
    step: int
    epoch: int


@dataclass
class SampleSaved(Event):
    """A preview image was written (``epoch`` is None for a mid-epoch, step-based sample)."""

    type: ClassVar[str] = "sample_saved"
    path: str
    step: int
    epoch: int | None
    prompt_index: int  # position of the prompt in the prompt file (the NN of the name)
    prompt: str


@dataclass
class WarningIssued(Event):
    type: ClassVar[str] = "warning"
    message: str


@dataclass
class LogLine(Event):
    type: ClassVar[str] = "log"
    level: str
    message: str


@dataclass
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    files: list[str]  # every file written, in order
    final_file: str  # the LoRA to use: the final file, or the -interrupted one
    steps: int
    seconds: float
    interrupted: bool = False
    # With validation: the saved file with the lowest validation loss, and that loss.
    best_file: str = ""
    best_loss: float | None = None
    # Why a run ended before its last step and still counts as finished (early stopping).
    stop_reason: str = ""
    # The run's peak memory as calibrate measures it: on CUDA the allocator's peak, reserved
    # included; on a CPU the process's peak resident set. None where not known.
    peak_memory_bytes: int | None = None


@dataclass
class RunFailed(Event):
    type: ClassVar[str] = "run_failed"
    message: str
    hint: str
    log_path: str
    # What went wrong, for a UI to offer a fix: "out_of_memory", "non_finite_loss",
    # "disk_full", or "" for anything else.
    kind: str = ""
    # For out_of_memory: `--set` overrides that make the run lighter, and what they do.
    retry_overrides: list[str] = field(default_factory=list)
    retry_description: str = ""
    # The run folder when the run got one, and whether it left a state to resume from.
    run_dir: str = ""
    resumable: bool = False


# The tool commands' events (`lora-train caption / resize / merge --events`): the wizard
# runs them in a child process and reads these instead of their text.


@dataclass
class ImagesTagged(Event):
    """``caption`` finished a batch: ``done`` of ``total`` pictures tagged."""

    type: ClassVar[str] = "images_tagged"
    done: int
    total: int


@dataclass
class CaptionsTagged(Event):
    """``caption`` ended: ``captions[i]`` is the caption of ``paths[i]`` (a caption file),
    written unless ``dry_run``; ``stopped``: cancelled between batches (the finished ones
    are written, the pictures not reached have none yet)."""

    type: ClassVar[str] = "captions_tagged"
    paths: list[str]
    captions: list[str]
    dry_run: bool = False
    stopped: bool = False


@dataclass
class LoraFactored(Event):
    """``resize`` or ``merge`` wrote ``output``: ``modules`` modules at the ``ranks`` given
    (rank -> how many modules), keeping this share of the Frobenius norm (lowest and mean
    over the modules; None without modules)."""

    type: ClassVar[str] = "lora_factored"
    command: str
    output: str
    modules: int
    ranks: dict[str, int]
    retained_lowest: float | None
    retained_mean: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class CommandFailed(Event):
    """A tool command stopped on bad input (the message and hint it printed)."""

    type: ClassVar[str] = "command_failed"
    message: str
    hint: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (RunStarted, RunResumed, PhaseChanged, StepEnded, EpochEnded,
                              ValidationMeasured, CheckpointSaved, BestFileSaved,
                              StoppedEarly, GridSaved, NotificationSent, StateSaved, SampleSaved,
                              WarningIssued, LogLine, RunFinished, RunFailed, ImagesTagged,
                              CaptionsTagged, LoraFactored, CommandFailed)
}


def event_from_json(line: str) -> Event:
    data = json.loads(line)
    cls = EVENT_TYPES[data.pop("type")]
    return cls(**data)


def read_events(path: Path) -> Iterator[Event]:
    """Events from a JSON-lines file; a torn last line (a run still writing) is skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            if line.strip():
                yield event_from_json(line)


Sink = Callable[[Event], None]


class PhaseTracker:
    """A sink that remembers the phase last said (the trainer says "training" again when a
    save or preview images said something else)."""

    def __init__(self) -> None:
        self.phase: str | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseChanged):
            self.phase = event.phase


class EventBus:
    """Fans events out to sinks (progress bar, JSON files, collectors). Thread-safe."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(self, event: Event) -> None:
        with self._lock:
            for sink in self._sinks:
                sink(event)


class JsonLinesSink:
    """Writes each event as one line and flushes, so followers see it at once."""

    def __init__(self, stream: TextIO, close: bool = False) -> None:
        self._stream = stream
        self._close = close
        self.broken: OSError | None = None

    def __call__(self, event: Event) -> None:
        if self.broken is not None:
            return
        try:
            self._stream.write(event.to_json() + "\n")
            self._stream.flush()
        except OSError as exc:
            # A full disk or a closed pipe must not end the training; the sink goes quiet
            # (the LoRA files and states are the record that matters).
            self.broken = exc

    def close(self) -> None:
        if self._close:
            self._stream.close()
