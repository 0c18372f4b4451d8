"""Saving during training: LoRA files and resumable states, and when a state is due.

The loop calls :meth:`Checkpointer.save` at its save points and :meth:`Checkpointer.state_due`
after every step; everything about names, precision, NaN checks, rotation and keeping a
second Ctrl+C away from a half-written file is here, not in the loop.

Rules a user can rely on:

* a LoRA file or state with a NaN or infinite weight is never written: the run stops with
  the step named, and the files before it stay the last good ones;
* every write is atomic (temporary file or folder, then rename): Ctrl+C, kill -9 or a full
  disk mid-write leaves the previous files whole;
* a second Ctrl+C while a file is being written waits for the write to finish (the
  ``guard`` the CLI's stop flag provides), then aborts;
* with ``save_state`` a state goes with every numbered file, with the file written when the
  run is stopped, and at least every ``save_state_every_n_minutes``;
* sd-scripts' rotation: ``save_last_n_epochs`` K deletes, after epoch file e, the file of
  epoch ``e − every·K``; ``save_last_n_steps`` S deletes, after step file s, the step file at
  ``s − S − 1`` rounded down to a multiple of ``every``; the ``_state`` forms (default: the
  same values) delete the states saved with those files (:func:`epoch_to_remove`,
  :func:`step_to_remove`).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_core import output_names as names
from lora_core.errors import NonFiniteError, TrainingError
from lora_core.events import CheckpointSaved, EventBus, PhaseChanged, StateSaved
from lora_core.profile import SavingSection
from lora_core.saving import lora_file
from lora_core.saving.metadata import at_save
from lora_core.saving.train_state import (
    LoadedState,
    Position,
    restore_rng,
    rng_of_process,
    save_state,
    state_name,
    states_folder,
)

NON_FINITE_HINT = ("lower the learning rate, use mixed_precision = \"bf16\" or \"no\" instead "
                   "of fp16, or set no_half_vae = true; `lora-train resume RUN_FOLDER --set "
                   "optimizer.learning_rate=...` continues from the last state")


@dataclass
class Outputs:
    """Where files go and what they are stamped with."""

    output_dir: Path
    output_name: str
    metadata: dict[str, str]
    save_precision: str
    written: list[Path] = field(default_factory=list)
    run_dir: Path | None = None       # where states go (None: no states, e.g. tests)
    # A resumed run saves names its first attempt may already have written after its last
    # state; those files are this run's own, and the newer one replaces them.
    replace_existing: bool = False


@dataclass(frozen=True)
class Rotation:
    """What sd-scripts' ``save_last_n_*`` options need of the plan: how often numbered files
    are written (``save_n_epoch_ratio`` already resolved) and how long an epoch is."""

    every_n_epochs: int | None = None
    every_n_steps: int | None = None
    steps_per_epoch: int = 1


def epoch_to_remove(epoch: int, every: int | None, keep: int | None) -> int | None:
    """The epoch whose file goes once epoch ``epoch`` is saved (sd-scripts'
    ``get_remove_epoch_no``), or None."""
    if keep is None or not every:
        return None
    old = epoch - every * keep
    return old if old > 0 else None


def step_to_remove(step: int, every: int | None, keep: int | None) -> int | None:
    """The step whose file goes once step ``step`` is saved (sd-scripts'
    ``get_remove_step_no``: files from the last ``keep`` steps stay), or None."""
    if keep is None or not every:
        return None
    old = step - keep - 1
    old -= old % every
    return old if old > 0 else None


class Checkpointer:
    def __init__(self, outputs: Outputs, saving: SavingSection, position: Callable[[], Position],
                 network, optimizer, scheduler, bus: EventBus,
                 guard: Callable[[], contextlib.AbstractContextManager] | None = None,
                 scaler=None,
                 eval_weights: Callable[[], contextlib.AbstractContextManager] | None = None,
                 rotation: Rotation | None = None, best=None) -> None:
        self.outputs = outputs
        self.best = best  # training.best.BestFile: the lowest-validation-loss copy
        self.saving = saving
        self.rotation = rotation or Rotation()
        self.position = position
        self.network, self.optimizer, self.scheduler = network, optimizer, scheduler
        self.bus = bus
        self.guard = guard or contextlib.nullcontext
        self.scaler = scaler  # fp16's GradScaler: its loss scale is part of the state
        # Schedule-Free: LoRA files hold the evaluation weights, states the training ones.
        self.eval_weights = eval_weights
        self.last_state_at = time.monotonic()
        self.last_state_step = -1
        # (step, [every process's RNG state]) gathered for the state of that step, when the
        # run has several processes (trainer.share_rng); else the state captures its own.
        self.shared_rng: tuple[int, list] | None = None
        remove_stale_temporaries(outputs.output_dir, outputs.output_name)

    @property
    def states_on(self) -> bool:
        return self.saving.save_state and self.outputs.run_dir is not None

    def save(self, state, kind: str, loss: float | None = None) -> Path:
        """A LoRA file (``kind``: step, epoch, final, interrupted), then a state with it.
        ``loss``: its validation loss, for the best file (``best``) when there is one."""
        path = self.save_lora(state, kind, loss)
        if self.states_on and (kind != "final" or self.saving.save_state_on_train_end):
            self.save_state(state)
        self.rotate(state, kind)
        return path

    def rotate(self, state, kind: str) -> None:
        """Delete what sd-scripts' save_last_n_* options say is now too old."""
        sv, rot, name = self.saving, self.rotation, self.outputs.output_name
        if kind == "epoch":
            every = rot.every_n_epochs
            old = epoch_to_remove(state.epoch, every, sv.save_last_n_epochs)
            if old is not None:
                self._remove_file(names.epoch_file_name(name, old))
            old = epoch_to_remove(state.epoch, every,
                                  sv.save_last_n_epochs_state or sv.save_last_n_epochs)
            if old is not None:
                self._remove_state(old * rot.steps_per_epoch)
        elif kind == "step":
            every = rot.every_n_steps
            old = step_to_remove(state.step, every, sv.save_last_n_steps)
            if old is not None:
                self._remove_file(names.step_file_name(name, old))
            old = step_to_remove(state.step, every,
                                 sv.save_last_n_steps_state or sv.save_last_n_steps)
            if old is not None:
                self._remove_state(old)

    def _remove_file(self, file_name: str) -> None:
        path = self.outputs.output_dir / file_name
        with self.guard(), contextlib.suppress(FileNotFoundError):
            path.unlink()
        if path in self.outputs.written:
            self.outputs.written.remove(path)

    def _remove_state(self, step: int) -> None:
        if self.states_on and step != self.last_state_step:
            assert self.outputs.run_dir is not None  # states_on
            folder = states_folder(self.outputs.run_dir) / state_name(
                self.outputs.output_name, step)
            with self.guard():
                shutil.rmtree(folder, ignore_errors=True)

    def save_lora(self, state, kind: str, loss: float | None = None) -> Path:
        name = self.outputs.output_name
        file_name = {
            "step": lambda: names.step_file_name(name, state.step),
            "epoch": lambda: names.epoch_file_name(name, state.epoch),
            "final": lambda: names.final_file_name(name),
            "interrupted": lambda: names.interrupted_file_name(name),
        }[kind]()
        path = self.outputs.output_dir / file_name
        precision = self.outputs.save_precision
        # Checked in the save precision: a weight fp32 holds can still be inf in fp16.
        tensors = self.weights_to_save(precision)
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(
                f"the network's weights became NaN or infinite (in {precision}, the save "
                f"precision) by step {state.step} ({len(bad)} tensors, e.g. {bad[0]}); "
                f"{file_name} was not written, so the files saved before are the last good "
                "ones", NON_FINITE_HINT)
        self.bus.emit(PhaseChanged(f"saving {file_name}"))
        # ss_epoch: the epoch this save belongs to (1-based), also when stopping mid-epoch.
        epoch = state.epoch + (1 if state.batch_in_epoch else 0)
        metadata = at_save(self.outputs.metadata, state.step, epoch)
        with self.guard():
            lora_file.save_lora(path, tensors, metadata, precision,
                                replace=self.outputs.replace_existing)
        if path not in self.outputs.written:
            self.outputs.written.append(path)
        self.bus.emit(CheckpointSaved(str(path), state.step, epoch, kind))
        if self.best is not None and loss is not None:
            with self.guard():
                self.best.offer(path, tensors, metadata, precision, state.step, epoch, loss)
        return path

    def weights_to_save(self, precision: str) -> dict[str, torch.Tensor]:
        if self.eval_weights is None:
            return lora_file.cast_state_dict(self.network.state_dict(), precision)
        with self.eval_weights():
            # Copies: leaving the context moves the parameters back in place, and a cast to
            # the parameters' own dtype on the CPU is no copy.
            return {k: v.clone() for k, v in
                    lora_file.cast_state_dict(self.network.state_dict(), precision).items()}

    def save_state(self, state) -> Path | None:
        if not self.states_on or self.last_state_step == state.step:
            return None
        position = self.position()
        self.bus.emit(PhaseChanged(f"saving the training state at step {state.step}"))
        with self.guard():
            shared = self.shared_rng
            rng = shared[1] if shared is not None and shared[0] == state.step else None
            path = save_state(self.outputs.run_dir, position, training_state(self.network),
                              self.optimizer, self.scheduler, self.saving.save_last_n_states,
                              scaler=self.scaler, rng=rng)
        self.last_state_at = time.monotonic()
        self.last_state_step = state.step
        self.bus.emit(StateSaved(str(path), state.step, state.epoch))
        return path

    def state_due(self) -> bool:
        """The wall-clock interval passed since the last state (OneTrainer's backups)."""
        minutes = self.saving.save_state_every_n_minutes
        return (self.states_on and minutes is not None
                and time.monotonic() - self.last_state_at >= minutes * 60)

    def drop_states(self) -> None:
        """A finished run has nothing to resume: its states go, unless asked to keep one."""
        if self.outputs.run_dir is not None and not self.saving.save_state_on_train_end:
            shutil.rmtree(self.outputs.run_dir / "states", ignore_errors=True)


def remove_stale_temporaries(output_dir: Path, output_name: str, age_s: float = 60) -> None:
    """Temporary files a killed run of this name left mid-write (kill -9 gives no chance to
    clean up); one younger than ``age_s`` may be another process's write in progress."""
    now = time.time()
    name = names.glob_escape(output_name)
    for pattern in (f".{name}.*.tmp", f".{name}-*.tmp"):
        for path in Path(output_dir).glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > age_s:
                    path.unlink()


# Group entries the profile sets (optimizer_args); not the ones an optimizer keeps as its
# own running state in its groups (Prodigy's and D-Adaptation's d, k, numerators...).
_PROFILE_HYPERPARAMETERS = frozenset({
    "betas", "weight_decay", "eps", "momentum", "dampening", "nesterov", "amsgrad",
    "beta1", "decay_rate", "clip_threshold", "scale_parameter", "warmup_init", "d_coef",
    "growth_rate", "use_bias_correction", "safeguard_warmup", "decouple",
})


def training_state(network) -> dict[str, torch.Tensor]:
    """What a training state keeps of the network (``AdapterNetwork.training_state``; the
    state dict of any other module)."""
    if hasattr(network, "training_state"):
        return network.training_state()
    return network.state_dict()


def restore(loaded: LoadedState, network, optimizer, scheduler, state,
            scaler=None, rank: int = 0, world: int = 1) -> list[str]:
    """Put a run back where its state was: weights, optimizer moments, schedule position,
    RNG streams and the position in the data order. Returns warnings for the user.

    The optimizer's hyperparameters (learning rates, betas, weight decay...) come from the
    profile, not from the state: ``lora-train resume --set optimizer.learning_rate=...``
    (the usual answer to a NaN) must take effect. The schedule keeps its position and is
    rescaled to the new base rates.
    """
    position = loaded.position
    device = next(network.parameters()).device
    wanted = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        tensors = {k: v.to(device) for k, v in loaded.network.items()}
        if hasattr(network, "load_training_state"):
            network.load_training_state(tensors)
        else:
            network.load_state_dict(tensors, strict=True)
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        if scaler is not None and loaded.scaler is not None:
            scaler.load_state_dict(loaded.scaler)
        restore_rng(rng_of_process(loaded.rng, rank, world))
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise TrainingError(
            f"the training state {loaded.path} does not fit this network or optimizer "
            f"({type(exc).__name__}: {first_line})",
            "resume with the settings the run was started with, or start a new run from "
            "its last LoRA file (`[network] network_weights`)") from None
    warnings = []
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper holds it
    base_lrs = getattr(inner, "base_lrs", None)
    for index, (group, new) in enumerate(zip(optimizer.param_groups, wanted, strict=True)):
        old_initial = group.get("initial_lr", group.get("lr"))
        new_initial = new.get("initial_lr", new.get("lr"))
        for key in _PROFILE_HYPERPARAMETERS & new.keys():
            group[key] = new[key]
        if old_initial and new_initial and old_initial != new_initial:
            # Same point of the schedule, new base rate.
            group["lr"] = group["lr"] * new_initial / old_initial
            group["initial_lr"] = new_initial
            if base_lrs is not None:
                base_lrs[index] = new_initial
            warnings.append(f"learning rate of {group.get('name', index)} changed from "
                            f"{old_initial:g} to {new_initial:g} on resume")
    state.step, state.epoch = position.step, position.epoch
    state.batch_in_epoch = position.batch_in_epoch
    state.losses.clear()
    state.losses.extend(position.losses)
    return warnings
