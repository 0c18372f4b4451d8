"""Training curves for TensorBoard and Weights & Biases, as sd-scripts logs them.

A tracker is an event sink: each step's ``loss/current`` and ``loss/average``, the learning
rates under the names the trainer gives them (``lr/unet``, ``lr/textencoder``, a group per
block or text encoder, ``lr/d*lr/...`` for D-Adaptation and Prodigy) and any other per-step
measurement (``max_norm/...``), at the global step; ``loss/epoch`` at each epoch's end, at
the epoch number; validation loss as ``loss/validation/step_average`` / ``step_divergence``
at the step and ``loss/validation/epoch_average`` / ``epoch_divergence`` at the epoch
number (sd-scripts' names). The folder is sd-scripts': ``logging_dir/<log_prefix><YYYYmmddHHMMSS>/
<log_tracker_name or network_train>``, so dashboards and ``tensorboard --logdir`` carry over.
TensorBoard is written with torch's own writer (the tensorboard package), W&B with wandb.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lora_core.events import EpochEnded, Event, RunFinished, StepEnded, ValidationMeasured
from lora_core.profile import Profile

DEFAULT_TRACKER_NAME = "network_train"


def logging_dir(profile: Profile) -> Path:
    """Where the logs go: ``logging_dir``, else ``<output_dir>/logs``."""
    return profile.path("logging", "logging_dir") or \
        (profile.path("saving", "output_dir") or profile.base_dir) / "logs"


def run_log_dir(profile: Profile, started: float) -> Path:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(started))
    name = profile.logging.log_tracker_name or DEFAULT_TRACKER_NAME
    return logging_dir(profile) / f"{profile.logging.log_prefix}{stamp}" / name


def scalars_of(event: Event) -> tuple[int, dict[str, float]] | None:
    """(step, {name: value}) that ``event`` logs, or None."""
    if isinstance(event, StepEnded):
        values = {"loss/current": event.loss, "loss/average": event.avg_loss, **event.lrs,
                  **event.metrics}
        return event.step, values
    if isinstance(event, EpochEnded):
        return event.epoch, {"loss/epoch": event.avg_loss}
    if isinstance(event, ValidationMeasured):
        # sd-scripts' names; epoch values at the epoch number, as loss/epoch.
        kind = event.kind
        return (event.epoch if kind == "epoch" else event.step), {
            f"loss/validation/{kind}_average": event.loss,
            f"loss/validation/{kind}_divergence": event.divergence}
    return None


class TensorBoardSink:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))

    def __call__(self, event: Event) -> None:
        found = scalars_of(event)
        if found is not None:
            step, values = found
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        if isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbSink:
    def __init__(self, profile: Profile, folder: Path, config: dict[str, Any]) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=profile.logging.log_tracker_name or DEFAULT_TRACKER_NAME,
                              name=profile.saving.output_name, dir=str(folder), config=config)

    def __call__(self, event: Event) -> None:
        found = scalars_of(event)
        if found is not None:
            step, values = found
            self.run.log(values, step=step)
        if isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        self.run.finish()


def open_trackers(profile: Profile, started: float, config: dict[str, Any]) -> list:
    """The sinks ``[logging] log_with`` asks for (none for "")."""
    kind = profile.logging.log_with
    folder = run_log_dir(profile, started)
    sinks: list = []
    if kind in ("tensorboard", "all"):
        sinks.append(TensorBoardSink(folder))
    if kind in ("wandb", "all"):
        sinks.append(WandbSink(profile, folder, config))
    return sinks
