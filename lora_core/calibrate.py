"""``lora-train calibrate``: the time and memory of a run, measured before the run, and the
settings that make it fit.

What it does, in order:

1. The profile is read and checked as ``run`` reads and checks it: a broken profile is
   refused with the same problems, before anything loads.
2. **A measurement** runs in a child process (``lora_core.calibrate_child``) what
   ``run`` runs up to training (load, caches, a preview when the profile has prompts), then
   ``warmup + steps`` real training steps of the same batches, in a temporary state and
   output folder that is deleted afterwards: nothing of the user's is written. It reports the
   time to the first step, each step's time and, at its end, its peak memory: on CUDA the
   allocator's peak, reserved included (``torch.cuda.max_memory_reserved``), plus what the
   process took beside the allocator while it ran (cuBLAS / cuDNN workspaces); on a CPU the
   process's peak resident set (``wait4``'s ``ru_maxrss`` of that one child, so each
   measurement is its own).
3. **The prediction** of the whole run: what the measurement spent beyond its steady
   steps (load, caches, and what the first steps compile once: bitsandbytes' 8-bit kernels
   on a CPU, torch_compile's blocks), the planned steps at the steady pace after warm-up
   (the mean step without the one-off slow ones: ``steady_seconds_per_step``), the
   preview images the schedule makes at the measured seconds per image, and the saves.
4. **Proposals**: with a memory budget (``--memory-budget``; on a GPU by default the memory
   free when the measurement started; on a CPU none unless given) and a run that does not
   fit, the levers are tried in order of what they cost in speed (cache latents and
   text-encoder outputs, gradient checkpointing, fp8 base weights, an 8-bit optimizer,
   ``full_bf16`` under bf16, on a CUDA GPU ``cpu_offload_checkpointing``, a smaller batch
   with gradient accumulation keeping the effective batch, block swap for Flux), each added
   to the ones before and *measured*; each is listed as the ``--set`` lines that make it,
   with its own seconds per step and peak and whether it fits, until one fits. A run that
   fits with gradient checkpointing on is measured without it (faster when it still fits).
   A candidate the checks refuse for this model is left out. Nothing is changed: each
   proposal is a setting the user could have typed.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.calibrate_child import (  # noqa: F401 (the child's side, re-exported)
    Measurement,
    _largest_batch_first,
    calibration_overrides,
    child_main,
    measure_in_child,
    own_peak_rss,
    steady_seconds_per_step,
)
from lora_core.compile_payoff import CompilePayoff, kept_cache_is_warm, payoff
from lora_core.errors import LoraError, ProfileError
from lora_core.paths import state_dir

DEFAULT_STEPS = 6  # measured steps, after the warm-up
WARMUP_STEPS = 2  # not counted: the first steps allocate and (on CUDA) tune kernels
# Of a remembered result; bump when its meaning changes (2: s/step without one-off steps,
# load_seconds all time beyond the steady steps, the CUDA memory outside the allocator).
_FORMAT = 2
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
    # Measured compiled and not when the profile compiles (or calibrate is asked to compare).
    compiling: CompilePayoff | None = None
    compile_note: str = ""  # why compiled and eager were not compared, when asked
    context_bytes: int = 0  # of the budget, kept for the CUDA context (a budget given on CUDA)

    @property
    def fits(self) -> bool | None:
        """Whether the profile as it is fits the budget (None: no budget)."""
        if self.budget_bytes is None:
            return None
        return not self.measured.error and \
            self.measured.peak_memory_bytes <= self.budget_bytes - self.context_bytes

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
                "proposals": [dataclasses.asdict(p) for p in self.proposals],
                "torch_compile": self.compiling.as_json() if self.compiling else None,
                "torch_compile_note": self.compile_note, "context_bytes": self.context_bytes}


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


def candidate_levers(profile: Any, family: Any, cuda: bool = False) -> list[list[str]]:
    """The levers a profile could add, in order of what they cost in speed; each a list of
    ``--set`` items (applied on top of the ones before). ``cuda``: measured on a CUDA GPU
    (the levers that only move things out of GPU memory are tried there only)."""
    ds, tr, net, opt = profile.dataset, profile.training, profile.network, profile.optimizer
    levers_of = family.levers if family is not None else frozenset()
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
    # The checkpointed blocks' inputs in CPU memory (~15 % slower for Flux, sd-scripts says);
    # on a CPU they are there already. It needs gradient checkpointing (proposed above).
    offloading = bool(tr.cpu_offload_checkpointing)
    if cuda and "cpu_offload_checkpointing" in levers_of and not offloading \
            and not tr.blocks_to_swap:
        levers.append(["training.cpu_offload_checkpointing=true"])
        offloading = True
    if tr.train_batch_size > 1:  # the same images per update: half the batch, or 1
        effective = tr.train_batch_size * tr.gradient_accumulation_steps
        batch = tr.train_batch_size // 2 if tr.train_batch_size % 2 == 0 else 1
        levers.append([f"training.train_batch_size={batch}",
                       f"training.gradient_accumulation_steps={effective // batch}"])
    if "blocks_to_swap" in levers_of and not tr.blocks_to_swap:
        # Not with cpu_offload_checkpointing (the check refuses both): block swap instead.
        levers.append(["training.cpu_offload_checkpointing=false"] * offloading
                      + ["training.blocks_to_swap=8"])
    return levers


def _merged(sets: list[str]) -> list[str]:
    """``--set`` items, a later one for the same key replacing an earlier one."""
    by_key: dict[str, str] = {}
    for item in sets:
        by_key[item.partition("=")[0]] = item
    return list(by_key.values())


def calibrate(profile_path: Path, overrides: list[str], *, budget: int | None = None,
              steps: int = DEFAULT_STEPS, again: bool = False, timeout_s: float | None = None,
              compare_compile: bool = False, progress=lambda text: None) -> Calibration:
    """Measure the profile (and, with a budget it does not fit, the levers); see the module
    docstring. Raises CheckError for a profile ``run`` would refuse. ``timeout_s``: the
    longest one measurement may take (default: 30 minutes). A profile with torch_compile is
    also measured without it, to say whether compiling pays off (``compare_compile``: one
    without it is measured with it too)."""
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
    compiles = profile.training.torch_compile
    wants_compile = compiles or compare_compile
    if remembered is not None and (budget is None or budget == remembered.budget_bytes) \
            and (remembered.compiling is not None or remembered.compile_note
                 or remembered.measured.error or not wants_compile):
        return _for_today(remembered, report.plan, profile.sample)
    cache_was_warm = kept_cache_is_warm()
    if remembered is not None:  # measured before, asked against another budget
        measured = remembered.measured
    else:
        progress(f"measuring {WARMUP_STEPS} + {steps} steps as the profile is")
        measured = measure_in_child(profile_path, overrides, steps, WARMUP_STEPS, timeout_s)
    context = 0
    if budget is None and measured.free_memory_bytes is not None:
        budget = measured.free_memory_bytes  # free with the child's CUDA context made
    elif budget is not None and measured.device.startswith("cuda"):
        # A budget the user gives is the card's memory; the allocator's peak leaves out the
        # CUDA context (and the kernels it loads), which the run needs beside it.
        context = CUDA_CONTEXT_BYTES
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
    usable = None if budget is None else budget - context  # what the allocator's peak may be
    run = _Trial(profile_path, overrides, steps, timeout_s, usable, progress)
    if slow_bf16:  # check warns; here it is measured: fp32 is many times faster there
        proposals.append(run(["training.mixed_precision=no"]))
    if budget is not None:
        proposals += _proposals(run, profile, fam, measured, usable, slow_bf16)
    result = Calibration(measured, report.plan.max_train_steps, eta, parts, budget, proposals,
                         context_bytes=context)
    if wants_compile and not measured.error:
        if remembered is not None and (remembered.compiling or remembered.compile_note):
            result.compiling, result.compile_note = (remembered.compiling,
                                                     remembered.compile_note)
        else:
            sizes = len({size for d in report.plan.datasets for size in d.bucket_items})
            result.compiling, result.compile_note = _compile_payoff(
                run, measured, compiles, report.plan.max_train_steps, cache_was_warm, sizes)
    _remember(key, result)
    return result


def _compile_payoff(run: _Trial, measured: Measurement, compiles: bool, planned_steps: int,
                    cache_was_warm: bool, bucket_sizes: int
                    ) -> tuple[CompilePayoff | None, str]:
    """The profile measured with torch_compile switched the other way, and the verdict; or
    why there is none (the check refuses the other way here: no compiler...; it failed)."""
    other = run.measure([f"training.torch_compile={'false' if compiles else 'true'}"])
    if isinstance(other, str):
        return None, other
    if other.error:
        return None, f"{'eager' if compiles else 'compiled'}, it failed: {other.error}"
    compiled, eager = (measured, other) if compiles else (other, measured)
    return payoff(compiled, eager, planned_steps, cache_was_warm, bucket_sizes), ""


DEFAULT_TIMEOUT_S = 1800.0
# A CUDA context with torch's kernels (loaded lazily since CUDA 11.7): about 0.3-0.5 GiB on
# current cards, outside the allocator's peak. Kept out of a budget the user gives on CUDA.
CUDA_CONTEXT_BYTES = 512 * 2**20


def recall(profile_path: Path, overrides: list[str] = (), *,
           steps: int = DEFAULT_STEPS) -> Calibration | None:
    """The result remembered for this profile as it is now (the same content, dataset and
    model files, device and torch version), its ETA predicted for today's plan; None when
    there is none, or when ``run`` would refuse the profile. Measures nothing and imports no
    torch: the wizard's review asks it when it opens, to show a calibration at once."""
    from lora_core.checks import check_profile
    from lora_core.profile_load import load_profile

    overrides = list(overrides)
    try:
        profile = load_profile(profile_path, overrides)
        report = check_profile(profile)
    except LoraError:
        return None
    if report.errors or report.plan is None:
        return None
    remembered = _recall(_memory_key(profile, profile_path, overrides, steps))
    return None if remembered is None else _for_today(remembered, report.plan, profile.sample)


def _for_today(remembered: Calibration, plan: Any, sample: Any) -> Calibration:
    """A remembered result, its prediction made for today's plan: the figures are
    remembered, the plan they predict for is today's."""
    remembered.remembered = True
    if not remembered.measured.error:
        remembered.eta_seconds, remembered.eta_parts = predict_eta(remembered.measured, plan,
                                                                   sample)
    remembered.total_steps = plan.max_train_steps
    if remembered.compiling is not None:
        remembered.compiling.planned_steps = plan.max_train_steps
    return remembered


class _Trial:
    """One candidate's measurement: checked first (one the checks refuse is not run)."""

    def __init__(self, profile_path: Path, overrides: list[str], steps: int,
                 timeout_s: float, budget: int | None, progress) -> None:
        self.profile_path, self.overrides, self.steps = profile_path, overrides, steps
        self.timeout_s, self.budget, self.progress = timeout_s, budget, progress

    def measure(self, sets: list[str]) -> Measurement | str:
        """The profile measured with ``sets``, or why the checks refuse it."""
        from lora_core.checks import check_profile
        from lora_core.profile_load import load_profile

        try:
            candidate = load_profile(self.profile_path, self.overrides + sets)
            errors = check_profile(candidate).errors
        except LoraError as exc:
            return f"not for this profile: {exc.message}"
        if errors:
            return f"not for this profile: {errors[0].text()}"
        self.progress("measuring --set " + " --set ".join(sets))
        return measure_in_child(self.profile_path, self.overrides + sets, self.steps,
                                WARMUP_STEPS, self.timeout_s)

    def __call__(self, sets: list[str]) -> Proposal:
        measured = self.measure(sets)
        if isinstance(measured, str):
            return Proposal(sets, None, None, False, measured)
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
    for lever in candidate_levers(profile, fam, cuda=plain.device.startswith("cuda")):
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
    """What a measurement depends on: the profile's content as read (overrides applied,
    paths absolute: the same answers give the same key from the user's file, a `--set`, or
    the wizard's snapshot of them), its dataset's and model file's sizes and times, the
    device, and the versions of torch, its build and this engine (a cheap signature: names,
    sizes and mtimes, no file is read)."""
    from importlib.metadata import PackageNotFoundError, version

    from lora_core import __version__
    from lora_core.checks.machine import ProbedMachine, torch_build
    from lora_core.profile import profile_to_dict

    digest = hashlib.sha256()
    digest.update(json.dumps(_plain(profile_to_dict(profile)), sort_keys=True,
                             default=str).encode())
    machine = ProbedMachine()
    device = ";".join(g.label() for g in machine.gpus) or "cpu"
    versions = []
    for package in ("torch", "bitsandbytes", "accelerate", "diffusers", "transformers"):
        try:
            versions.append(version(package))
        except PackageNotFoundError:
            versions.append("-")
    digest.update(json.dumps([_FORMAT, steps, device, versions, torch_build(),
                              __version__, os.environ.get("CUDA_VISIBLE_DEVICES")]).encode())
    paths = [profile.path("dataset", key) for key in ("train_data_dir", "reg_data_dir",
                                                      "dataset_config")]
    paths += [profile.path("model", "pretrained_model_name_or_path"),
              profile.path("sample", "sample_prompts")]
    for path in paths:
        digest.update(_signature(path).encode())
    return digest.hexdigest()[:32]


def _plain(value: Any) -> Any:
    """``value`` with whole floats as ints: a field that takes either (lr_warmup_steps: a
    count or a ratio) reads 0 from one file and 0.0 from another, the same answer."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
        compiling = data.get("compiling")
        return Calibration(measured, data["total_steps"], data["eta_seconds"],
                           data["eta_parts"], data["budget_bytes"], proposals,
                           compiling=CompilePayoff(**compiling) if compiling else None,
                           compile_note=data.get("compile_note", ""),
                           context_bytes=data.get("context_bytes", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(key: str, result: Calibration) -> None:
    from lora_core.atomic import atomic_write

    data = {"measured": dataclasses.asdict(result.measured),
            "proposals": [dataclasses.asdict(p) for p in result.proposals],
            "total_steps": result.total_steps, "eta_seconds": result.eta_seconds,
            "eta_parts": result.eta_parts, "budget_bytes": result.budget_bytes,
            "context_bytes": result.context_bytes, "compile_note": result.compile_note,
            "compiling": dataclasses.asdict(result.compiling) if result.compiling else None}
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
    if result.compiling is not None:
        lines += result.compiling.lines()
    elif result.compile_note:
        lines.append(f"torch_compile: not compared: {result.compile_note}")
    return "\n".join(lines + _budget_lines(result))


def _budget_lines(result: Calibration) -> list[str]:
    lines = []
    if result.budget_bytes is None:
        free = _free_ram()
        lines.append("no memory budget: give --memory-budget SIZE for proposals"
                     + (f" (free RAM now: {format_size(free)})" if free else ""))
    else:
        kept = (f", less {format_size(result.context_bytes)} kept for the CUDA context"
                if result.context_bytes else "")
        lines.append(f"budget {format_size(result.budget_bytes)}{kept}: the profile "
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




__all__ = ["Calibration", "Measurement", "Proposal", "calibrate", "parse_size", "recall",
           "render"]

