"""``lora-train calibrate``: the time and memory of a run, measured before the run, and the
settings that make it fit.

What it does, in order:

1. The profile is read and checked as ``run`` reads and checks it: a broken profile is
   refused with the same problems, before anything loads.
2. **A measurement** runs in a child process (``python -m lora_core.calibrate --child``) what
   ``run`` runs up to training (load, caches, a preview when the profile has prompts), then
   ``warmup + steps`` real training steps of the same batches, in a temporary state and
   output folder that is deleted afterwards: nothing of the user's is written. It reports the
   time to the first step, each step's time and, at its end, its peak memory: on CUDA the
   allocator's peak, reserved included (``torch.cuda.max_memory_reserved``); on a CPU the
   process's peak resident set (``wait4``'s ``ru_maxrss`` of that one child, so each
   measurement is its own).
3. **The prediction** of the whole run: load and caching (time to the first step less the
   first step), the planned steps at the measured seconds per step after warm-up, the
   preview images the schedule makes at the measured seconds per image, and the saves.
4. **Proposals**: with a memory budget (``--memory-budget``; on a GPU by default the memory
   free when the measurement started; on a CPU none unless given) and a run that does not
   fit, the levers are tried in order of what they cost in speed (cache latents and
   text-encoder outputs, gradient checkpointing, fp8 base weights, an 8-bit optimizer,
   ``full_bf16`` under bf16, a smaller batch with gradient accumulation keeping the
   effective batch, block swap for Flux), each added to the ones before and *measured*;
   each is listed as the ``--set`` lines that make it, with its own seconds per step and
   peak and whether it fits, until one fits. A run that fits with gradient checkpointing on
   is measured without it (faster when it still fits). A candidate the checks refuse for
   this model is left out. Nothing is changed: each proposal is a setting the user could
   have typed.
5. The result is remembered for the same profile content, device and torch version
   (``state_dir()/calibrations``), so asking again answers at once (``--again`` measures
   anew); asked against another budget, the profile's own measurement is reused and only
   the proposals are measured.

This module never imports torch; the child does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import LoraError, ProfileError
from lora_core.paths import state_dir

DEFAULT_STEPS = 6  # measured steps, after the warm-up
WARMUP_STEPS = 2  # not counted: the first steps allocate and (on CUDA) tune kernels
_FORMAT = 1  # of a remembered result; bump when its meaning changes
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from "12GB" (10^9), "11.5GiB" (2^30), "900MiB" or a number of bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ProfileError(f"--memory-budget {text!r} is not a size",
                           "give bytes or a number with a unit: 12GB, 11.5GiB, 900MiB "
                           "(GB = 10^9 bytes, GiB = 2^30)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ProfileError(f"--memory-budget {text!r} is no memory at all",
                           "give the memory the run may use, e.g. 11.5GiB")
    return size


def format_size(size: float | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


# --- one measurement ------------------------------------------------------------------------


@dataclass
class Measurement:
    """What one child measured. ``error``: why it failed (out of memory included)."""

    first_step_seconds: float = 0.0
    load_seconds: float = 0.0  # time to the first step, less the first step itself
    seconds_per_step: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
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
    command = [sys.executable, "-m", "lora_core.calibrate", "--child", str(profile_path),
               "--out", str(out), "--steps", str(steps), "--warmup", str(warmup),
               "--workdir", str(workdir)]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "LORA_TUI_STATE_DIR": str(workdir / "state"), "PYTHONUNBUFFERED": "1"}
    try:
        with open(workdir / "child.log", "wb") as log:
            launched = time.time()  # the interpreter's start counts, as a real run's does
            child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            started = time.monotonic()
            try:
                while True:
                    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                    if pid:
                        child.returncode = os.waitstatus_to_exitcode(status)
                        break
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        _kill_group(child.pid)
                        os.wait4(child.pid, 0)
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
        if measured.device == "cpu":
            measured.peak_memory_bytes = usage.ru_maxrss * 1024  # KiB on Linux
        if measured.first_step_at:
            measured.first_step_seconds = max(measured.first_step_seconds,
                                              measured.first_step_at - launched)
            measured.load_seconds = max(0.0, measured.first_step_seconds
                                        - measured.seconds_per_step)
        return measured
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
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
    seen: list[tuple[Any, float]] = []
    bus = EventBus([lambda event: seen.append((event, time.perf_counter()))])
    run_training(profile, profile_path, start_run(profile, profile_path), bus, lambda: False)
    step_times = [t for e, t in seen if isinstance(e, StepEnded)]
    if not step_times:
        raise LoraError("the measurement made no training step", "see the log")
    durations = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    counted = durations[max(0, warmup - 1):] or durations or [step_times[0] - started]
    measured.step_seconds = counted
    measured.seconds_per_step = sum(counted) / len(counted)
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
    measured.load_seconds = max(0.0, measured.first_step_seconds - measured.seconds_per_step)
    saves = [t for e, t in seen if isinstance(e, CheckpointSaved)]
    if saves:
        measured.save_seconds = max(0.0, saves[-1] - step_times[-1])
    if measured.device.startswith("cuda"):
        measured.peak_memory_bytes = int(torch.cuda.max_memory_reserved())
    out.write_text(json.dumps(dataclasses.asdict(measured)), encoding="utf-8")
    return 0


# --- the prediction and the proposals ---------------------------------------------------------


@dataclass
class Proposal:
    set: list[str]
    seconds_per_step: float | None
    peak_memory_bytes: int | None
    fits: bool
    note: str = ""  # why it was not measured, or what it failed with


@dataclass
class Calibration:
    measured: Measurement  # its error: the profile as it is ran out of memory
    total_steps: int
    eta_seconds: float | None  # None when the profile as it is could not be measured
    eta_parts: dict[str, float]
    budget_bytes: int | None
    proposals: list[Proposal]
    remembered: bool = False

    @property
    def fits(self) -> bool | None:
        """Whether the profile as it is fits the budget (None: no budget)."""
        if self.budget_bytes is None:
            return None
        return not self.measured.error and self.measured.peak_memory_bytes <= self.budget_bytes

    def as_json(self) -> dict[str, Any]:
        m = self.measured
        failed = bool(m.error)
        return {"seconds_per_step": None if failed else m.seconds_per_step,
                "error": m.error, "fits": self.fits,
                "first_step_seconds": None if failed else m.first_step_seconds,
                "peak_memory_bytes": None if failed else m.peak_memory_bytes,
                "eta_seconds": self.eta_seconds,
                "eta_parts": self.eta_parts, "total_steps": self.total_steps,
                "device": m.device, "torch_version": m.torch_version,
                "measured_steps": len(m.step_seconds), "budget_bytes": self.budget_bytes,
                "free_memory_bytes": m.free_memory_bytes, "remembered": self.remembered,
                "proposals": [dataclasses.asdict(p) for p in self.proposals]}


def predict_eta(measured: Measurement, plan: Any, sample: Any) -> tuple[float, dict[str, float]]:
    """Seconds the whole run takes: load and caches, steps, previews, saves."""
    from lora_core.training.sample_prompts import sample_points

    images = 0
    if sample.sample_prompts and measured.sample_seconds_per_image is not None:
        points = sample_points(sample, plan.max_train_steps, plan.steps_per_epoch,
                               plan.num_epochs)
        images = len(points) * _prompt_count(sample)
    saves = len(plan.epoch_save_points) + len(plan.step_save_points) + 1
    parts = {"load_and_caches": measured.load_seconds,
             "steps": plan.max_train_steps * measured.seconds_per_step,
             "samples": images * (measured.sample_seconds_per_image or 0.0),
             "saves": saves * measured.save_seconds}
    return sum(parts.values()), parts


def _prompt_count(sample: Any) -> int:
    from lora_core.training.sample_prompts import read_sample_prompts

    try:
        return len(read_sample_prompts(Path(sample.sample_prompts), sample.sample_sampler))
    except LoraError:
        return 0


def candidate_levers(profile: Any, family: Any) -> list[list[str]]:
    """The levers a profile could add, in order of what they cost in speed; each a list of
    ``--set`` items (applied on top of the ones before)."""
    ds, tr, net, opt = profile.dataset, profile.training, profile.network, profile.optimizer
    levers: list[list[str]] = []
    if not (ds.cache_latents or ds.cache_latents_to_disk):
        levers.append(["dataset.cache_latents=true"])
    if net.network_train_unet_only and not ds.cache_text_encoder_outputs:
        levers.append(["dataset.cache_text_encoder_outputs=true"])
    if not tr.gradient_checkpointing:
        levers.append(["training.gradient_checkpointing=true"])
    if family is not None and "fp8_base" in family.levers and not tr.fp8_base:
        levers.append(["training.fp8_base=true"])
    if opt.optimizer_type == "AdamW":
        levers.append(["optimizer.optimizer_type=AdamW8bit"])
    if tr.mixed_precision == "bf16" and not tr.full_bf16:
        levers.append(["training.full_bf16=true"])  # the LoRA and its moments in bf16
    if tr.train_batch_size > 1:  # the same images per update: half the batch, or 1
        effective = tr.train_batch_size * tr.gradient_accumulation_steps
        batch = tr.train_batch_size // 2 if tr.train_batch_size % 2 == 0 else 1
        levers.append([f"training.train_batch_size={batch}",
                       f"training.gradient_accumulation_steps={effective // batch}"])
    if family is not None and "blocks_to_swap" in family.levers and not tr.blocks_to_swap:
        levers.append(["training.blocks_to_swap=8"])
    return levers


def _merged(sets: list[str]) -> list[str]:
    """``--set`` items, a later one for the same key replacing an earlier one."""
    by_key: dict[str, str] = {}
    for item in sets:
        by_key[item.partition("=")[0]] = item
    return list(by_key.values())


def calibrate(profile_path: Path, overrides: list[str], *, budget: int | None = None,
              steps: int = DEFAULT_STEPS, again: bool = False, timeout_s: float | None = None,
              progress=lambda text: None) -> Calibration:
    """Measure the profile (and, with a budget it does not fit, the levers); see the module
    docstring. Raises CheckError for a profile ``run`` would refuse. ``timeout_s``: the
    longest one measurement may take (default: 30 minutes)."""
    from lora_core.checks import check_profile
    from lora_core.checks.machine import ProbedMachine
    from lora_core.family_registry import family
    from lora_core.profile_load import load_profile

    if steps < 1:
        raise ProfileError(f"--steps {steps} measures nothing", "give 1 or more (6 is usual)")
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    profile = load_profile(profile_path, overrides)
    report = check_profile(profile)
    report.raise_for_errors()
    key = _memory_key(profile, profile_path, overrides, steps)
    remembered = None if again else _recall(key)
    if remembered is not None and (budget is None or budget == remembered.budget_bytes):
        remembered.remembered = True
        # The figures are remembered; the plan they predict for is today's.
        if not remembered.measured.error:
            remembered.eta_seconds, remembered.eta_parts = predict_eta(
                remembered.measured, report.plan, profile.sample)
        remembered.total_steps = report.plan.max_train_steps
        return remembered
    if remembered is not None:  # measured before, asked against another budget
        measured = remembered.measured
    else:
        progress(f"measuring {WARMUP_STEPS} + {steps} steps as the profile is")
        measured = measure_in_child(profile_path, overrides, steps, WARMUP_STEPS, timeout_s)
    if budget is None and measured.free_memory_bytes is not None:
        budget = measured.free_memory_bytes
    if measured.error and not (measured.out_of_memory and budget is not None):
        raise LoraError(f"the measurement failed: {measured.error}",
                        "a run that runs out of memory does not fit: give --memory-budget "
                        "(the memory it may use) to get the settings that fit; for any "
                        "other error run `lora-train run` on the profile to see all of it")
    eta, parts = (None, {}) if measured.error else predict_eta(measured, report.plan,
                                                              profile.sample)
    source = report.model
    fam = family(source.family) if getattr(source, "family", None) else None
    machine = ProbedMachine()
    slow_bf16 = (profile.training.mixed_precision == "bf16" and not machine.has_cuda
                 and machine.cpu_bf16 is False)
    proposals: list[Proposal] = []
    run = _Trial(profile_path, overrides, steps, timeout_s, budget, progress)
    if slow_bf16:  # check warns; here it is measured: fp32 is many times faster there
        proposals.append(run(["training.mixed_precision=no"]))
    if budget is not None:
        proposals += _proposals(run, profile, fam, measured, budget, slow_bf16)
    result = Calibration(measured, report.plan.max_train_steps, eta, parts, budget, proposals)
    _remember(key, result)
    return result


DEFAULT_TIMEOUT_S = 1800.0


class _Trial:
    """One candidate's measurement: checked first (one the checks refuse is not run)."""

    def __init__(self, profile_path: Path, overrides: list[str], steps: int,
                 timeout_s: float, budget: int | None, progress) -> None:
        self.profile_path, self.overrides, self.steps = profile_path, overrides, steps
        self.timeout_s, self.budget, self.progress = timeout_s, budget, progress

    def __call__(self, sets: list[str]) -> Proposal:
        from lora_core.checks import check_profile
        from lora_core.profile_load import load_profile

        try:
            candidate = load_profile(self.profile_path, self.overrides + sets)
            errors = check_profile(candidate).errors
        except LoraError as exc:
            return Proposal(sets, None, None, False, f"not for this profile: {exc.message}")
        if errors:
            return Proposal(sets, None, None, False, f"not for this profile: {errors[0].text()}")
        self.progress("measuring --set " + " --set ".join(sets))
        measured = measure_in_child(self.profile_path, self.overrides + sets, self.steps,
                                    WARMUP_STEPS, self.timeout_s)
        if measured.error:
            note = "ran out of memory" if measured.out_of_memory else "failed"
            return Proposal(sets, None, None, False, f"{note}: {measured.error}")
        fits = self.budget is None or measured.peak_memory_bytes <= self.budget
        return Proposal(sets, measured.seconds_per_step, measured.peak_memory_bytes, fits)


def _proposals(run: _Trial, profile: Any, fam: Any, plain: Measurement, budget: int,
               slow_bf16: bool) -> list[Proposal]:
    found: list[Proposal] = []
    if not plain.error and plain.peak_memory_bytes <= budget:
        if profile.training.gradient_checkpointing:  # room to go faster
            found.append(run(["training.gradient_checkpointing=false"]))
        return found
    sets: list[str] = []
    for lever in candidate_levers(profile, fam):
        if slow_bf16 and lever == ["training.full_bf16=true"]:
            continue  # bf16 is the slow path on this CPU: not more of it
        proposal = run(_merged(sets + lever))
        found.append(proposal)
        # A lever the checks refuse, or one that fails for another reason than memory, is
        # left out of the ones after it (they would fail with it).
        if proposal.seconds_per_step is None and not proposal.note.startswith("ran out"):
            continue
        sets = _merged(sets + lever)
        if proposal.fits:
            break
    return found


# --- remembered results -----------------------------------------------------------------------


def _memory_key(profile: Any, profile_path: Path, overrides: list[str], steps: int) -> str:
    """What a measurement depends on: the profile's content and overrides, its dataset's and
    model file's sizes and times, the device, and the versions of torch, its build and this
    engine (a cheap signature: names, sizes and mtimes, no file is read)."""
    from importlib.metadata import PackageNotFoundError, version

    from lora_core import __version__
    from lora_core.checks.machine import ProbedMachine, torch_build

    digest = hashlib.sha256()
    try:
        digest.update(Path(profile_path).read_bytes())
    except OSError:
        pass
    machine = ProbedMachine()
    device = ";".join(g.label() for g in machine.gpus) or "cpu"
    versions = []
    for package in ("torch", "bitsandbytes", "accelerate", "diffusers", "transformers"):
        try:
            versions.append(version(package))
        except PackageNotFoundError:
            versions.append("-")
    digest.update(json.dumps([_FORMAT, overrides, steps, device, versions, torch_build(),
                              __version__, os.environ.get("CUDA_VISIBLE_DEVICES")]).encode())
    paths = [profile.path("dataset", key) for key in ("train_data_dir", "reg_data_dir",
                                                      "dataset_config")]
    paths += [profile.path("model", "pretrained_model_name_or_path"),
              profile.path("sample", "sample_prompts")]
    for path in paths:
        digest.update(_signature(path).encode())
    return digest.hexdigest()[:32]


def _signature(path: Path | None) -> str:
    if path is None or not path.exists():
        return "-"
    if path.is_file():
        stat = path.stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    entries = []
    for item in sorted(path.rglob("*")):
        if item.is_file():
            stat = item.stat()
            entries.append(f"{item.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _memory_path(key: str) -> Path:
    return state_dir() / "calibrations" / f"{key}.json"


def _recall(key: str) -> Calibration | None:
    try:
        data = json.loads(_memory_path(key).read_text(encoding="utf-8"))
        measured = Measurement(**data["measured"])
        proposals = [Proposal(**p) for p in data["proposals"]]
        return Calibration(measured, data["total_steps"], data["eta_seconds"],
                           data["eta_parts"], data["budget_bytes"], proposals)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(key: str, result: Calibration) -> None:
    from lora_core.atomic import atomic_write

    data = {"measured": dataclasses.asdict(result.measured),
            "proposals": [dataclasses.asdict(p) for p in result.proposals],
            "total_steps": result.total_steps, "eta_seconds": result.eta_seconds,
            "eta_parts": result.eta_parts, "budget_bytes": result.budget_bytes}
    try:
        atomic_write(_memory_path(key), lambda tmp: tmp.write_text(json.dumps(data),
                                                                     encoding="utf-8"))
    except (OSError, LoraError):
        pass  # remembering is a convenience: the result stands without it


def render(result: Calibration) -> str:
    """The result for a terminal."""
    m = result.measured
    if m.error:
        lines = [f"calibrated on {m.device} (torch {m.torch_version}): the profile as it is "
                 f"did not run: {m.error}"]
        return "\n".join(lines + _budget_lines(result))
    lines = [f"calibrated on {m.device} (torch {m.torch_version}): {len(m.step_seconds)} "
             f"steps measured after {WARMUP_STEPS} warm-up steps"
             + (" (remembered; --again measures anew)" if result.remembered else ""),
             f"  time to the first step  {m.first_step_seconds:8.1f} s",
             f"  seconds per step        {m.seconds_per_step:8.2f} s",
             f"  peak memory             {format_size(m.peak_memory_bytes):>10}"
             + (" (the allocator's peak, reserved included)" if m.device != "cpu"
                else " (the process's peak resident memory)")]
    parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.0f} s"
                      for name, seconds in result.eta_parts.items() if seconds >= 0.5)
    lines.append(f"  predicted run           {result.eta_seconds:8.0f} s for "
                 f"{result.total_steps} steps ({parts})")
    return "\n".join(lines + _budget_lines(result))


def _budget_lines(result: Calibration) -> list[str]:
    lines = []
    if result.budget_bytes is None:
        free = _free_ram()
        lines.append("no memory budget: give --memory-budget SIZE for proposals"
                     + (f" (free RAM now: {format_size(free)})" if free else ""))
    else:
        lines.append(f"budget {format_size(result.budget_bytes)}: the profile "
                     + ("fits" if result.fits else "does not fit"))
    fits = bool(result.fits)
    if result.budget_bytes is not None and not result.proposals:
        lines.append("  no proposal" + ("" if fits else ": no lever left to try"))
    for p in result.proposals:
        sets = " ".join(f"--set {s}" for s in p.set)
        if p.seconds_per_step is None:
            lines.append(f"  {sets}: {p.note}")
            continue
        lines.append(f"  {sets}\n      {p.seconds_per_step:.2f} s/step, peak "
                     f"{format_size(p.peak_memory_bytes)}, "
                     + ("fits" if p.fits else "does not fit"))
    if result.budget_bytes is not None and not fits \
            and not any(p.fits for p in result.proposals):
        lines.append("nothing measured fits the budget: a smaller resolution or rank, or a "
                     "machine with more memory")
    return lines


def _free_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _child_entry(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lora_core.calibrate")
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


__all__ = ["Calibration", "Measurement", "Proposal", "calibrate", "parse_size", "render"]

if __name__ == "__main__":
    raise SystemExit(_child_entry(sys.argv[1:]))
