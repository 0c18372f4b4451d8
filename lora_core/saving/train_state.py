"""Resumable training states: the folder format, writing it safely, finding and reading it.

A state is everything ``lora-train resume`` needs to continue a run exactly, as if it had
never stopped (kohya-compat.md §7.1 names the folders; kohya_ss #2384 / #3380 are the
resumes that silently restarted the step count):

    <run folder>/states/<output_name>-step<step:08d>-state/
        train_state.json     position: step, epoch, batch in the epoch, seed, the recent
                             losses, the files written so far, a fingerprint of the plan
        network.safetensors  the adapter weights in float32 (not the save precision)
        optimizer.pt         optimizer.state_dict()
        scheduler.pt         lr scheduler state_dict()
        rng.pt               torch CPU/CUDA, Python random and numpy RNG states

The ``.pt`` files hold only tensors and plain values and are read with
``torch.load(weights_only=True)``: a state folder someone else hands you cannot run code.

A state is written into a hidden temporary folder which is renamed into place once every
file is on disk (a rename is atomic), so a crash, a kill -9 or a full disk mid-write leaves
the older states whole and no half state that looks complete. Only then are states beyond
``save_last_n_states`` deleted, oldest first.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_to_bytes

from lora_core.atomic import atomic_folder
from lora_core.errors import NonFiniteError, TrainingError
from lora_core.runs.status import STATES_DIR

STATE_FORMAT = 1
POSITION_FILE = "train_state.json"
NETWORK_FILE = "network.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
SCALER_FILE = "scaler.pt"  # fp16's loss scale, when the run has one


@dataclass
class Position:
    """Where the run is, as ``train_state.json`` stores it."""

    step: int
    epoch: int                  # 0-based index of the current epoch
    batch_in_epoch: int         # batches of that epoch already trained on
    seed: int
    output_name: str
    max_train_steps: int
    num_epochs: int
    plan_fingerprint: str
    fixed: dict[str, str] = field(default_factory=dict)  # fixed_settings() of the profile
    losses: list[float] = field(default_factory=list)  # the current epoch's step losses
    written: list[str] = field(default_factory=list)   # files saved so far, in order
    saved_at: float = 0.0
    format: int = STATE_FORMAT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # sd-scripts' train_state.json keys, so its users recognise the file.
        data["current_step"] = self.step
        data["current_epoch"] = self.epoch
        return data


@dataclass
class LoadedState:
    path: Path
    position: Position
    network: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    scaler: dict[str, Any] | None = None


def state_name(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}-state"


def states_folder(run_dir: Path) -> Path:
    return Path(run_dir) / STATES_DIR


def plan_fingerprint(plan) -> str:
    """A hash of what decides the data order: every image with its repeats and bucket, the
    batch size and the step count. A resume with a different dataset would not continue the
    same run, so it is refused."""
    digest = hashlib.sha256()
    for item in plan.items:
        digest.update(f"{item.record.path}|{item.repeats}|{item.bucket_reso}|"
                      f"{item.subset_index}\n".encode())
    # Not the step or epoch count: the order of an epoch depends only on (seed, epoch), so a
    # finished run can be trained further with more epochs.
    digest.update(f"{plan.batch_size}|{plan.batches_per_epoch}|"
                  f"{plan.gradient_accumulation_steps}|{plan.num_processes}".encode())
    return digest.hexdigest()[:16]


# Fields a resume cannot change: the saved weights and optimizer moments have their shapes
# and meaning. (The learning rates, the schedule's length and most others can change.)
FIXED_ON_RESUME = (
    ("network", "network_module"), ("network", "network_dim"), ("network", "network_alpha"),
    ("network", "conv_dim"), ("network", "conv_alpha"), ("network", "factor"),
    ("network", "network_train_unet_only"), ("network", "network_train_text_encoder_only"),
    ("network", "dora_wd"), ("network", "dylora_unit"), ("network", "rescaled"),
    ("network", "train_on_input"), ("optimizer", "optimizer_type"), ("optimizer", "lr_scheduler"),
    ("model", "pretrained_model_name_or_path"),
)


def fixed_settings(profile) -> dict[str, str]:
    return {f"{section}.{key}": str(getattr(getattr(profile, section), key))
            for section, key in FIXED_ON_RESUME}


def capture_rng() -> dict[str, Any]:
    """Every RNG training draws from, as tensors and plain values."""
    version, internal, gauss = __import__("random").getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
    }


def rng_of_process(rng: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """The RNG state saved for process ``rank`` of ``world``: its own when the state holds
    every rank's (a resume with the same process count, which the plan check ensures);
    states of older versions hold the main process's only, used for all (then the other
    processes' noise differs from the interrupted run's)."""
    ranks = rng.get("ranks")
    if ranks is not None and len(ranks) == world:
        return ranks[rank]
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(rng["torch_cpu"])
    if rng["torch_cuda"] and torch.cuda.is_available():
        if len(rng["torch_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["torch_cuda"])
        else:  # another GPU count: seed what there is from the first (not bit-exact)
            for index in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(rng["torch_cuda"][0], index)
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_state(run_dir: Path, position: Position, network_state: dict[str, torch.Tensor],
               optimizer, scheduler, keep_last: int, scaler=None,
               rng: list[dict[str, Any]] | None = None) -> Path:
    """Write a state folder atomically, then prune older ones; returns its path. ``rng``:
    every process's RNG state, by rank (several processes); None: this process's own."""
    folder = states_folder(run_dir)
    final = folder / state_name(position.output_name, position.step)
    position.saved_at = time.time()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in network_state.items()}
    _check_finite(tensors, position.step)

    def write(tmp: Path) -> None:
        # Serialised in memory and written with Python's file I/O, so a full disk raises
        # OSError with its errno (safetensors and torch.save wrap it in their own errors).
        (tmp / NETWORK_FILE).write_bytes(save_to_bytes(tensors))
        (tmp / OPTIMIZER_FILE).write_bytes(_torch_bytes(optimizer.state_dict()))
        (tmp / SCHEDULER_FILE).write_bytes(_torch_bytes(scheduler.state_dict()))
        # The main process's at the top level (what a one-process resume reads), and with
        # several processes every rank's under "ranks".
        states = rng if rng is not None else [capture_rng()]
        payload = {**states[0], **({"ranks": states} if len(states) > 1 else {})}
        (tmp / RNG_FILE).write_bytes(_torch_bytes(payload))
        if scaler is not None:
            (tmp / SCALER_FILE).write_bytes(_torch_bytes(scaler.state_dict()))
        (tmp / POSITION_FILE).write_text(json.dumps(position.to_json(), indent=2),
                                         encoding="utf-8")

    # A resumed run saving the same step again: the newer state replaces the older whole.
    atomic_folder(final, write, replace=True)
    prune_states(run_dir, keep_last)
    return final


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _check_finite(tensors: dict[str, torch.Tensor], step: int) -> None:
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(
            f"the network's weights hold NaN or infinite values at step {step} "
            f"({len(bad)} tensors, e.g. {bad[0]}); nothing from this step is saved",
            "resume from the last state with a lower learning rate (lora-train resume "
            "RUN_FOLDER --set optimizer.learning_rate=...), mixed_precision = \"bf16\" or "
            "\"no\" instead of fp16, or no_half_vae = true")


def list_states(run_dir: Path) -> list[Path]:
    """Complete state folders of a run, oldest first (hidden temporary folders are ignored)."""
    folder = states_folder(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name.startswith(".") or not (path / POSITION_FILE).is_file():
            continue
        try:
            step = int(json.loads((path / POSITION_FILE).read_text(encoding="utf-8"))["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: not offered for a resume (load_state names it when asked)
        found.append((int(step), path.stat().st_mtime, path))
    return [path for _, _, path in sorted(found)]


def latest_state(run_dir: Path) -> Path | None:
    states = list_states(run_dir)
    return states[-1] if states else None


def prune_states(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` states, and temporary folders left by a
    crash during a write."""
    folder = states_folder(run_dir)
    for path in folder.glob(".*"):
        if time.time() - path.stat().st_mtime > 60:  # not one being written right now
            shutil.rmtree(path, ignore_errors=True)
    for path in list_states(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def load_state(path: Path) -> LoadedState:
    """Read a state folder (or the newest state of a run folder)."""
    path = Path(path)
    if not (path / POSITION_FILE).is_file():
        newest = latest_state(path)
        if newest is None:
            raise TrainingError(
                f"{path} holds no saved training state",
                "a state is written with every checkpoint, when a run is stopped, and every "
                "save_state_every_n_minutes; a run that never got that far cannot be resumed: "
                "start it again")
        path = newest
    try:
        data = json.loads((path / POSITION_FILE).read_text(encoding="utf-8"))
        data.pop("current_step", None)
        data.pop("current_epoch", None)
        position = Position(**data)
        if position.format != STATE_FORMAT:
            raise ValueError(f"state format {position.format}, this version reads "
                             f"{STATE_FORMAT}")
        network = load_file(str(path / NETWORK_FILE))
        optimizer = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        scheduler = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        rng = torch.load(path / RNG_FILE, map_location="cpu", weights_only=True)
        scaler = (torch.load(path / SCALER_FILE, map_location="cpu", weights_only=True)
                  if (path / SCALER_FILE).is_file() else None)
        for name, value, keys in ((OPTIMIZER_FILE, optimizer, ("state", "param_groups")),
                                  (SCHEDULER_FILE, scheduler, ("last_epoch",)),
                                  (RNG_FILE, rng, ("torch_cpu", "torch_cuda", "python",
                                                   "numpy"))):
            if not isinstance(value, dict) or any(k not in value for k in keys):
                raise ValueError(f"{name} lacks {', '.join(keys)}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, EOFError,
            SafetensorError, RuntimeError, pickle.UnpicklingError) as exc:
        raise TrainingError(f"the training state {path} is damaged: {exc}",
                            "delete that folder; resume then uses the state before it") from None
    return LoadedState(path, position, network, optimizer, scheduler, rng, scaler)
