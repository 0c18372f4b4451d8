"""The measuring side of ``lora-train calibrate``: one measurement is a child process
(``python -m lora_core.calibrate_child``) that trains as ``run`` trains, a few steps, and
writes what it measured; :func:`measure_in_child` starts it, watches its time and reads its
peak memory. What the measurements mean and what to propose is ``lora_core.calibrate``'s.

The child imports torch; this module does not at its top (the wizard's review imports
``calibrate``, which imports this).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import LoraError
from lora_core.paths import compile_cache_dir, state_dir
from lora_core.process_memory import own_peak_rss


@dataclass
class Measurement:
    """What one child measured. ``error``: why it failed (out of memory included)."""

    first_step_seconds: float = 0.0
    # The run's time beyond its steady steps: load, caches, and what the first steps spend
    # once (bitsandbytes' kernels and torch_compile's blocks compiling).
    load_seconds: float = 0.0
    seconds_per_step: float = 0.0  # after the warm-up: steady_seconds_per_step
    step_seconds: list[float] = field(default_factory=list)
    outside_allocator_bytes: int = 0  # on CUDA: taken beside the allocator, in the peak
    peak_memory_bytes: int = 0
    sample_seconds_per_image: float | None = None
    sample_seconds_before_steps: float = 0.0  # the timing preview, left out of load_seconds
    save_seconds: float = 0.0
    device: str = "cpu"
    torch_version: str = ""
    free_memory_bytes: int | None = None  # on CUDA: free when it started
    first_step_at: float = 0.0  # wall clock (time.time) of the first step's end
    error: str = ""
    out_of_memory: bool = False  # the error: it ran out of memory (or was killed for it)


def calibration_overrides(profile: Any, workdir: Path, steps: int, warmup: int) -> None:
    """The profile as a measurement trains it (in place): ``warmup + steps`` steps, its
    outputs in ``workdir``, no validation, no saves but the final one, no notifications or
    trackers, one sampling of its prompts before the first step (to time a preview)."""
    tr, sv, sm = profile.training, profile.saving, profile.sample
    tr.max_train_epochs = None
    tr.max_train_steps = warmup + steps
    tr.validation_split = 0.0
    tr.early_stopping_patience = None
    sv.output_dir = str(workdir / "out")
    sv.output_name = "calibration"
    for name in ("save_every_n_epochs", "save_every_n_steps", "save_n_epoch_ratio",
                 "save_last_n_epochs", "save_last_n_steps", "save_last_n_epochs_state",
                 "save_last_n_steps_state", "save_state_every_n_minutes"):
        setattr(sv, name, None)
    sv.save_state = sv.save_state_on_train_end = False
    sv.tag_summary = False
    sm.sample_every_n_steps = sm.sample_every_n_epochs = None
    sm.sample_at_first = bool(sm.sample_prompts)
    profile.notify.command, profile.notify.webhook = "", ""
    profile.logging.log_with = ""


def measure_in_child(profile_path: Path, overrides: list[str], steps: int, warmup: int,
                     timeout_s: float | None = None) -> Measurement:
    """One measurement in a child process (its own peak memory; its own process group, so a
    timeout stops its data-loader workers too); never raises for a run that fails: its
    ``error`` says why, ``out_of_memory`` when it ran out (the GPU's allocator, or on Linux
    the kernel's out-of-memory killer). A failed one keeps its log in the state folder."""
    workdir = Path(tempfile.mkdtemp(prefix="lora-calibrate-"))
    out = workdir / "measured.json"
    command = [sys.executable, "-m", "lora_core.calibrate_child", "--child", str(profile_path),
               "--out", str(out), "--steps", str(steps), "--warmup", str(warmup),
               "--workdir", str(workdir)]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "LORA_TUI_STATE_DIR": str(workdir / "state"), "PYTHONUNBUFFERED": "1"}
    # torch_compile's kept cache is the real one: what the measurement compiles, the run
    # reads (and a measurement with a warm cache times what the run will pay).
    env["LORA_TUI_COMPILE_CACHE_DIR"] = str(compile_cache_dir())
    try:
        with open(workdir / "child.log", "wb") as log:
            launched = time.time()  # the interpreter's start counts, as a real run's does
            child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            started = time.monotonic()
            usage = None
            try:
                while True:
                    if hasattr(os, "wait4"):
                        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                        if pid:
                            child.returncode = os.waitstatus_to_exitcode(status)
                            break
                    elif child.poll() is not None:  # Windows: the child says its own peak
                        break
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        _kill_group(child.pid)
                        child.wait()
                        return Measurement(error=f"the measurement took over {timeout_s:.0f} "
                                           "s (--timeout) and was stopped")
                    time.sleep(0.05)
            except BaseException:  # Ctrl+C, or the wizard closing the dialog (SIGTERM)
                _kill_group(child.pid)
                raise
        _kill_group(child.pid)  # any data-loader worker left behind
        measured = _read_measurement(out)
        if measured is None:
            return _failure(workdir, child.returncode)
        if measured.device == "cpu" and usage is not None:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            measured.peak_memory_bytes = usage.ru_maxrss * scale
        if measured.first_step_at:  # the interpreter's own start, before the child timed
            before = max(0.0, measured.first_step_at - launched - measured.first_step_seconds)
            measured.first_step_seconds += before
            measured.load_seconds += before
        return measured
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
    import signal

    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)
        else:  # Windows: the child itself (its data-loader workers end with it)
            os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _failure(workdir: Path, returncode: int) -> Measurement:
    """What a child that wrote no measurement says; its log kept as
    ``state_dir()/calibrations/last-failure.log``."""
    started = _read_measurement(workdir / "started.json") or Measurement()
    text = (workdir / "child.log").read_text(encoding="utf-8", errors="replace")
    kept = state_dir() / "calibrations" / "last-failure.log"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(text, encoding="utf-8")
    except OSError:
        kept = None
    lines = [line for line in text.splitlines() if line.strip()]
    if returncode < 0:
        started.error = (f"killed by signal {-returncode} (on Linux usually the kernel's "
                         "out-of-memory killer: it did not fit)")
        started.out_of_memory = True
    else:
        error = next((line for line in reversed(lines) if line.startswith("error:")),
                     lines[-1] if lines else f"exit code {returncode}")
        started.error = error.removeprefix("error: ")
        started.out_of_memory = "out of memory" in started.error.lower()
    if kept is not None:
        started.error += f" (its log: {kept})"
    return started


def _read_measurement(path: Path) -> Measurement | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return Measurement(**{k: v for k, v in data.items()
                          if k in {f.name for f in dataclasses.fields(Measurement)}})


def child_main(profile_path: Path, overrides: list[str], out: Path, steps: int, warmup: int,
               workdir: Path) -> int:
    """The child's side: train ``warmup + steps`` steps and write what was measured."""
    started = time.perf_counter()
    import torch

    from lora_core.events import CheckpointSaved, EventBus, PhaseChanged, SampleSaved, StepEnded
    from lora_core.profile_load import load_profile
    from lora_core.session import run_training, start_run

    measured = Measurement(torch_version=torch.__version__)
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        measured.free_memory_bytes = int(free)
        measured.device = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        torch.cuda.reset_peak_memory_stats()
    # Said first: a run that runs out of memory still tells the device and its free memory.
    (workdir / "started.json").write_text(json.dumps(dataclasses.asdict(measured)),
                                          encoding="utf-8")
    profile = load_profile(profile_path, overrides)
    calibration_overrides(profile, workdir, steps, warmup)
    _largest_batch_first()
    seen: list[tuple[Any, float]] = []
    bus = EventBus([lambda event: seen.append((event, time.perf_counter()))])
    run_training(profile, profile_path, start_run(profile, profile_path), bus, lambda: False)
    step_times = [t for e, t in seen if isinstance(e, StepEnded)]
    if not step_times:
        raise LoraError("the measurement made no training step", "see the log")
    durations = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    counted = durations[max(0, warmup - 1):] or durations or [step_times[0] - started]
    measured.step_seconds = counted
    measured.seconds_per_step = steady_seconds_per_step(counted)
    sampling = [t for e, t in seen if isinstance(e, PhaseChanged) and e.phase == "sampling"]
    images = [t for e, t in seen if isinstance(e, SampleSaved)]
    if sampling and images:
        measured.sample_seconds_per_image = (images[-1] - sampling[0]) / len(images)
        if images[-1] < step_times[0]:
            # The preview made to time one is not what a run does before its first step.
            measured.sample_seconds_before_steps = images[-1] - sampling[0]
    before = measured.sample_seconds_before_steps
    measured.first_step_seconds = step_times[0] - started - before
    measured.first_step_at = time.time() - (time.perf_counter() - step_times[0]) - before
    measured.load_seconds = max(0.0, step_times[-1] - started - before
                                - len(step_times) * measured.seconds_per_step)
    saves = [t for e, t in seen if isinstance(e, CheckpointSaved)]
    if saves:
        measured.save_seconds = max(0.0, saves[-1] - step_times[-1])
    if not measured.device.startswith("cuda"):
        # Its own peak resident set (the parent reads the same from wait4 where it can).
        measured.peak_memory_bytes = own_peak_rss() or 0
    else:
        # What the process took outside the allocator since it started (cuBLAS / cuDNN
        # workspaces, kernels loaded as they are first used) counts too; the free memory it
        # started with (the default budget) already had the CUDA context out.
        free_now, _ = torch.cuda.mem_get_info()
        outside = (measured.free_memory_bytes or free_now) - free_now \
            - torch.cuda.memory_reserved()
        measured.outside_allocator_bytes = max(0, int(outside))
        measured.peak_memory_bytes = int(torch.cuda.max_memory_reserved()) \
            + measured.outside_allocator_bytes
    out.write_text(json.dumps(dataclasses.asdict(measured)), encoding="utf-8")
    return 0


def steady_seconds_per_step(durations: list[float]) -> float:
    """The run's pace from the measured steps: their mean, less the outliers (over 3x the
    median). A step that compiles something once (bitsandbytes' 8-bit kernels on a CPU at
    their first shapes, torch_compile's blocks at a new size) is a one-off cost, counted
    once in ``load_seconds``, not a pace for every step; the mean of the rest keeps the
    slower and faster buckets of a mixed-size dataset in proportion."""
    median = statistics.median(durations)
    kept = [d for d in durations if d <= 3 * median]
    return sum(kept) / len(kept)


def _largest_batch_first() -> None:
    """In this measuring child only: each epoch's largest batch (pixels, images) trains
    first, the others in their order. A measurement's few steps would otherwise meet the
    largest bucket of a mixed-size dataset only by chance, and the peak memory of the run
    is that bucket's."""
    from lora_core.dataset import plan as plans
    from lora_core.training import trainer

    def ordered(plan: Any, seed: int, epoch: int) -> list[list[int]]:
        batches = plans.epoch_batches(plan, seed, epoch)

        def pixels(batch: list[int]) -> int:
            return sum(plan.items[i].bucket_reso[0] * plan.items[i].bucket_reso[1]
                       for i in batch)

        if batches:
            largest = max(range(len(batches)), key=lambda i: pixels(batches[i]))
            batches.insert(0, batches.pop(largest))
        return batches

    trainer.epoch_batches = ordered


def _child_entry(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lora_core.calibrate_child")
    parser.add_argument("--child", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return child_main(args.child, args.overrides, args.out, args.steps, args.warmup,
                          args.workdir)
    except LoraError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which says it
        name = type(exc).__name__
        if "OutOfMemory" in name or "out of memory" in str(exc).lower():
            print("error: ran out of memory", file=sys.stderr)
        else:
            print(f"error: {name}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(_child_entry(sys.argv[1:]))
