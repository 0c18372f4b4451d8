"""Which saved file is best, and when to stop: validation loss turned into answers.

With validation on, every saved LoRA file has the validation loss measured at its save
point, and the one with the lowest loss so far is also kept as
``<output_name>-best.safetensors``: the same tensors, with metadata naming the file it
copies, its epoch, step and loss. It is the one file a run replaces as it goes (atomically:
a kill -9 mid-write leaves the previous best whole); it belongs to this run's output name,
which is never another run's (``output_names.free_output_name``).

``early_stopping_patience = N``: after N validations in a row without a new lowest loss
the run ends, as a finished run with its final file (:meth:`BestFile.observe`).

Resuming: the best file's own metadata says its loss and step; the validations a resumed
run already made are read back from the run folder's ``events.jsonl``, so the patience
count continues where it was. Neither needs anything new in the training state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

from lora_core import output_names as names
from lora_core.events import BestFileSaved, Event, ValidationMeasured, read_events

# Metadata keys of the best file (beside the copied file's own ss_* keys).
BEST_OF_KEY = "lora_train_best_of"
BEST_STEP_KEY = "lora_train_best_step"
BEST_EPOCH_KEY = "lora_train_best_epoch"
BEST_LOSS_KEY = "lora_train_best_validation_loss"


class BestFile:
    """Keeps ``<output_name>-best.safetensors`` and counts validations for early stopping."""

    def __init__(self, output_dir: Path, output_name: str, patience: int | None,
                 emit: Callable[[Event], None]) -> None:
        self.path = Path(output_dir) / names.best_file_name(output_name)
        self.patience = patience
        self.emit = emit
        self.loss: float | None = None        # the best file's validation loss
        self.step: int | None = None
        self.lowest: float | None = None      # lowest validation loss measured (any point)
        self.lowest_step = 0
        self.since_lower = 0                  # validations since the lowest
        self.stop_message = ""

    # -- the best file ------------------------------------------------------------------

    def offer(self, saved: Path, tensors: dict, metadata: dict[str, str], precision: str,
              step: int, epoch: int, loss: float | None) -> bool:
        """``saved`` was just written with ``tensors`` / ``metadata`` and has validation
        loss ``loss``: make it the best file when it is lower than the best so far."""
        if loss is None or not math.isfinite(loss):
            return False
        if self.loss is not None and loss >= self.loss:
            return False
        from lora_core.saving import lora_file

        best_metadata = {**metadata, BEST_OF_KEY: saved.name, BEST_STEP_KEY: str(step),
                         BEST_EPOCH_KEY: str(epoch), BEST_LOSS_KEY: repr(float(loss))}
        lora_file.save_lora(self.path, tensors, best_metadata, precision, replace=True)
        self.loss, self.step = float(loss), step
        self.emit(BestFileSaved(str(self.path), str(saved), step, epoch, float(loss)))
        return True

    # -- early stopping -----------------------------------------------------------------

    def observe(self, loss: float, step: int) -> bool:
        """A validation measured ``loss`` after ``step``. True when the run should stop
        now (``patience`` validations in a row without a new lowest)."""
        if math.isfinite(loss) and (self.lowest is None or loss < self.lowest):
            self.lowest, self.lowest_step, self.since_lower = loss, step, 0
            return False
        self.since_lower += 1
        if self.patience is None or self.since_lower < self.patience:
            return False
        self.stop_message = (
            f"stopped early at step {step}: {self.since_lower} validations in a row without "
            f"a lower validation loss than {self.lowest:.5g} (step {self.lowest_step}; "
            f"early_stopping_patience = {self.patience})")
        return True

    # -- resuming -----------------------------------------------------------------------

    def restore(self, run_dir: Path | None, resumed_step: int) -> None:
        """Continue the best file and the patience count of a run resumed at
        ``resumed_step``. A best file written after that step (by the attempt that was
        killed) is replaced by the next save, whatever its loss: those steps run again."""
        from lora_core.saving import lora_file

        if self.path.is_file():
            with contextlib.suppress(Exception):
                metadata = lora_file.read_metadata(self.path)
                step = int(metadata[BEST_STEP_KEY])
                if step <= resumed_step:
                    self.loss, self.step = float(metadata[BEST_LOSS_KEY]), step
        if run_dir is None or not (Path(run_dir) / "events.jsonl").is_file():
            return
        measured: dict[int, float] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            for event in read_events(Path(run_dir) / "events.jsonl"):
                if isinstance(event, ValidationMeasured) and event.step <= resumed_step:
                    measured[event.step] = event.loss
        for step in sorted(measured):
            self.observe(measured[step], step)
        self.stop_message = ""
