"""One training run from a valid profile: checks, run folder, model, train, finish.

This is what ``lora-train run`` (and the wizard, through that command) executes. The checks
here are the ones ``lora-train check`` runs (``lora_core.checks``), so the plan the user saw
is the plan that runs and nothing heavy starts with an error in the profile. Errors are
:class:`LoraError` with a message and hint; the CLI turns them into an exit code and a
``run_failed`` event.

Under ``accelerate launch`` / ``torchrun`` every process runs this; only the main one
(rank 0) makes the run folder, records the last run and writes files and events. The plan
counts the processes, and the seed is the main process's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core import output_names as names
from lora_core.checks import CheckReport, check_profile
from lora_core.checks.inputs import taken_name
from lora_core.checks.machine import TorchMachine
from lora_core.dataset.plan import plan_summary
from lora_core.errors import DatasetError, LoraError, ProfileError
from lora_core.events import (
    BestFileSaved,
    EventBus,
    PhaseChanged,
    RunFinished,
    RunStarted,
    StoppedEarly,
    WarningIssued,
)
from lora_core.profile import Profile
from lora_core.runs.folders import RunFolder, create_run_folder, record_last_run
from lora_core.runs.status import (
    RunStatus,
    launched_group,
    lock_run,
    new_status,
    pid_alive,
    process_start_time,
    read_status,
    register_run,
    run_pid,
    write_status,
)
from lora_core.saving.tag_summary import write_tag_summary

log = logging.getLogger(__name__)


def process_count() -> int:
    """Processes of this run, from the variables accelerate launch / torchrun set."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunResult:
    run_folder: RunFolder | None
    files: list[Path]
    interrupted: bool
    steps: int
    seconds: float


@dataclass
class StartedRun:
    """What exists once a run has started, before any model is loaded."""

    report: CheckReport
    folder: RunFolder | None  # None on processes other than the main one
    output_name: str
    warnings: list[str]
    status: RunStatus | None = None  # run.json (main process only)
    resume: object | None = None     # a saving.train_state.LoadedState to continue from
    lock: object | None = None       # the run folder's lock, held until the process ends


def run_checks(profile: Profile) -> CheckReport:
    """Every check ``lora-train check`` makes, then what only the imported optimizer can
    tell when its source could not be read; raises on any error."""
    # The processes this run really has: `lora-train run` launches the profile's count.
    report = check_profile(profile, num_processes=process_count(), on=TorchMachine())
    # Unset v_parameterization / zero_terminal_snr: what the model file's markers decide, as
    # the check reported it; set here, so the run folder's profile says it.
    from lora_core.models.prediction import apply_prediction

    apply_prediction(profile.model, profile.training,
                     getattr(report.model, "markers", ()))
    if profile.training.num_processes != process_count():
        from lora_core.checks.problem import warning

        report.problems.append(warning(
            f"`[training] num_processes` = {profile.training.num_processes}, but this run has "
            f"{process_count()} process(es), and its steps are counted for those",
            "start it with `lora-train run` (which launches the processes) or with "
            "--num-processes", section="training", key="num_processes"))
    report.raise_for_errors()
    from lora_core.checks.optimizer import OptimizerSignature, signature_problems
    from lora_core.checks.problem import raise_for_errors
    from lora_core.training.optim import optimizer_class
    from lora_core.training.optimizer_args import effective_optimizer_args

    opt = profile.optimizer
    found = signature_problems(opt, effective_optimizer_args(opt),
                               OptimizerSignature.of(optimizer_class(opt.optimizer_type)))
    raise_for_errors(found, "the profile has", "fix the fields named above", ProfileError)
    return report


def start_run(profile: Profile, profile_path: Path | None) -> StartedRun:
    """Everything before the model loads: check, name the outputs, make the run folder.

    An existing output name is never overwritten: the run saves under the next free
    ``<name>_N`` and says so in a warning.
    """
    report = run_checks(profile)  # its plan names the files with a free output name
    warnings = [p.text() for p in report.warnings]
    output_dir = profile.path("saving", "output_dir")
    if not is_main_process():
        return StartedRun(report, None, report.plan.output_name, warnings)
    # Files may have appeared since the check (another run): ask once more.
    output_name, notes = taken_name(output_dir, report.plan.output_name)
    if notes:
        warnings += [p.text() for p in notes]
        report.plan = dataclasses.replace(report.plan, output_name=output_name)
    folder = create_run_folder(output_dir, output_name, profile)
    lock = lock_run(folder.path)
    record_last_run(folder, profile_path)
    status = _start_status(folder, output_name, profile_path, report.plan)
    return StartedRun(report, folder, output_name, warnings, status, lock=lock)


def _start_status(folder: RunFolder, output_name: str, profile_path: Path | None,
                  plan) -> RunStatus:
    status = new_status(folder.path, output_name, folder.profile, profile_path,
                        total_steps=plan.max_train_steps, total_epochs=plan.num_epochs)
    write_status(status)
    register_run(folder.path)
    return status


def start_resume(run_dir: Path, overrides: list[str]) -> tuple[Profile, StartedRun]:
    """Everything before the model loads for ``lora-train resume``: the run's own profile
    (plus ``--set`` overrides), its newest state, and a check that the dataset still makes
    the same plan. The run continues in its folder, under its name; when ``--set
    saving.output_dir=...`` moves it (a full disk), a new run folder there continues it."""
    from lora_core.profile_io import save_profile
    from lora_core.profile_load import load_profile
    from lora_core.saving.train_state import fixed_settings, load_state, plan_fingerprint

    run_dir = Path(run_dir).resolve()
    old = read_status(run_dir)
    # Only the main process asks: under the launcher it marks the run active (with the
    # launcher's pid) before the other ranks read the status, which would refuse their own
    # resume as a run "still running".
    if is_main_process() and old.active and pid_alive(old.pid, old.pid_started):
        raise LoraError(f"the run in {run_dir} is still running (pid {old.pid})",
                        "follow it with `lora-tui` or stop it with `lora-train stop "
                        f"{run_dir}` first")
    folder = RunFolder(run_dir)
    lock = lock_run(run_dir) if is_main_process() else None
    profile = load_profile(folder.profile, overrides)
    loaded = load_state(run_dir)
    position = loaded.position
    changed = [f"`[{key.split('.')[0]}] {key.split('.')[1]}` ({position.fixed[key]} -> {now})"
               for key, now in fixed_settings(profile).items()
               if key in position.fixed and position.fixed[key] != now]
    if changed:
        raise ProfileError(
            f"a resume cannot change {', '.join(changed)}: the saved weights and optimizer "
            "state belong to the old value",
            "resume without that --set, or start a new run that begins from the run's last "
            "LoRA file (`[network] network_weights`)")
    report = run_checks(profile)
    plan = dataclasses.replace(report.plan, output_name=position.output_name)
    report.plan = plan
    if plan_fingerprint(plan) != position.plan_fingerprint:
        raise DatasetError(
            f"the dataset or batch settings changed since this run saved its state "
            f"({loaded.path.name}): the same steps would not see the same images",
            "put the dataset back as it was, or start a new run that begins from the last "
            "LoRA file: set `[network] network_weights` to it")
    # The run's own files carry its name: continuing it overwrites nothing of another run.
    warnings = [p.text() for p in report.warnings if p.field != ("saving", "output_name")]
    if (plan.max_train_steps, plan.num_epochs) != (position.max_train_steps,
                                                   position.num_epochs):
        warnings.append(
            f"the run now has {plan.max_train_steps} steps in {plan.num_epochs} epochs "
            f"(it was started for {position.max_train_steps} in {position.num_epochs}): the "
            "learning-rate schedule continues on the new length")
    output_dir = profile.path("saving", "output_dir")
    if output_dir.resolve() != run_dir.parent.parent.resolve() and is_main_process():
        if names.names_in_use(output_dir, position.output_name):
            raise LoraError(
                f"files named {position.output_name!r} already exist in {output_dir}",
                "resume into an empty folder (--set saving.output_dir=...)")
        folder = create_run_folder(output_dir, position.output_name, profile)
        lock = lock_run(folder.path)
        warnings.append(f"continuing {run_dir} in a new run folder {folder.path}")
    elif overrides and is_main_process():
        # The run folder's profile is the record of what runs: a later resume or rerun
        # must see the overrides too.
        save_profile(profile, folder.profile)
    if not is_main_process():
        return profile, StartedRun(report, None, position.output_name, warnings,
                                   resume=loaded)
    record_last_run(folder, folder.profile)
    if folder.path == run_dir:
        status = old
        status.status, status.message = "starting", ""
        status.pid = run_pid()
        status.process_group = launched_group()
        status.pid_started = process_start_time(status.pid)
        status.resumes += 1
        status.total_steps, status.total_epochs = plan.max_train_steps, plan.num_epochs
        write_status(status)
        register_run(folder.path)  # listed as the newest again
    else:
        status = _start_status(folder, position.output_name, folder.profile, plan)
        status.resumed_from = str(run_dir)
        write_status(status)
    return profile, StartedRun(report, folder, position.output_name, warnings, status,
                               resume=loaded, lock=lock)


def shared_seed(profile: Profile) -> int:
    """The profile's seed, or a random one drawn by the main process and sent to all."""
    if profile.training.seed is not None:
        return profile.training.seed
    seed = random.randint(0, 2**32 - 1)
    if process_count() > 1:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState()  # joins the process group
        seed = broadcast_object_list([seed], from_process=0)[0]
    return seed


def run_training(profile: Profile, profile_path: Path | None, started_run: StartedRun,
                 bus: EventBus, stop_requested) -> RunResult:
    started = time.time()
    folder, plan = started_run.folder, started_run.report.plan
    output_name = started_run.output_name
    main = folder is not None
    _route_library_logs()
    resume = started_run.resume
    seed = resume.position.seed if resume is not None else shared_seed(profile)
    if main:
        summary = plan_summary(plan)
        summary["seed"] = seed
        bus.emit(RunStarted(run_dir=str(folder.path), profile_path=str(profile_path or ""),
                            output_name=output_name, log_path=str(folder.log), plan=summary))
        for message in started_run.warnings:
            bus.emit(WarningIssued(message))
    trackers = []
    if main and profile.logging.log_with:
        from lora_core.training.trackers import open_trackers

        trackers = open_trackers(profile, started, plan_summary(plan))
        for tracker in trackers:
            bus.add(tracker)
    try:
        return _train_and_finish(profile, profile_path, started_run, bus, stop_requested,
                                 seed, started)
    finally:
        for tracker in trackers:
            tracker.close()


def _train_and_finish(profile: Profile, profile_path: Path | None, started_run: StartedRun,
                      bus: EventBus, stop_requested, seed: int, started: float) -> RunResult:
    from accelerate.utils import set_seed

    from lora_core.saving.metadata import RunInfo, training_metadata
    from lora_core.training.optim import optimizer_description
    from lora_core.training.trainer import WEIGHT_DTYPES, Outputs, TrainState, train

    report, folder = started_run.report, started_run.folder
    output_name, plan = started_run.output_name, started_run.report.plan
    main = folder is not None
    resume = started_run.resume
    # Heavy imports only now: `check` and the wizard never pay for torch.
    set_seed(seed)
    bus.emit(PhaseChanged("loading model"))

    bundle = model_family(profile).load(profile,
                                        WEIGHT_DTYPES[profile.training.mixed_precision])
    output_dir = profile.path("saving", "output_dir")
    first_started = (started_run.status.started_at if started_run.status is not None
                     else started)
    run = RunInfo(session_id=random.randint(0, 2**31), started_at=first_started, seed=seed,
                  output_name=output_name, model_name=bundle.model_name,
                  model_file=bundle.model_file,
                  optimizer_repr=optimizer_description(profile.optimizer),
                  warmup_steps=plan.warmup_steps, max_train_steps=plan.max_train_steps,
                  num_epochs=plan.num_epochs, num_processes=plan.num_processes)
    outputs = Outputs(output_dir=output_dir, output_name=output_name,
                      metadata=bundle.impl.file_metadata(
                          bundle, profile, training_metadata(profile, plan, run)),
                      save_precision=profile.saving.save_precision,
                      run_dir=folder.path if main else None,
                      replace_existing=resume is not None)
    if resume is not None:
        outputs.written = [Path(p) for p in resume.position.written]
    state = TrainState(seed=seed)
    ending = EndingNotes(started_run.status)
    bus.add(ending)
    interrupted = train(profile, plan, bundle, outputs, state, bus, stop_requested, resume)
    if main and profile.saving.tag_summary:
        # Written with the final file, so a run that fails early leaves no file behind.
        summary = write_tag_summary(
            output_dir / names.tag_summary_file_name(output_name), report.scan,
            profile.saving.tag_summary_order, replace=outputs.replace_existing)
        if summary not in outputs.written:  # a resumed run rewrote its own
            outputs.written.append(summary)
    seconds = time.time() - started
    loras = [p for p in outputs.written if p.suffix == ".safetensors"]
    bus.emit(RunFinished(files=[str(p) for p in outputs.written],
                         final_file=str(loras[-1]) if loras else "", steps=state.step,
                         seconds=seconds, interrupted=interrupted, best_file=ending.best_file,
                         best_loss=ending.best_loss, stop_reason=ending.stop_reason,
                         peak_memory_bytes=peak_memory_bytes()))
    return RunResult(folder, outputs.written, interrupted, state.step, seconds)


def peak_memory_bytes() -> int | None:
    """This process's peak memory, measured as calibrate measures a run's (bench/gpu.sh
    compares the two): CUDA's allocator peak with what it reserved, else the peak RSS."""
    import torch

    from lora_core.process_memory import own_peak_rss

    if torch.cuda.is_available() and torch.cuda.max_memory_reserved():  # it trained there
        return int(torch.cuda.max_memory_reserved())
    return own_peak_rss()


def model_family(profile: Profile):
    """The family of the profile's base model (headers only). A pickled checkpoint's family
    is told when it loads: it is an SD checkpoint, which any SD family's loader reads."""
    from lora_core.family_registry import family
    from lora_core.models.loading import inspect_model

    name = inspect_model(profile.model.pretrained_model_name_or_path, profile.base_dir).family
    return family(name or "sd1")


class EndingNotes:
    """A sink that remembers what ``run_finished`` reports besides the files: the best
    file (also one a resumed run's first attempt made) and why the run stopped early."""

    def __init__(self, status: RunStatus | None) -> None:
        self.best_file = status.best_file if status is not None else ""
        self.best_loss = status.best_validation_loss if self.best_file else None
        self.stop_reason = ""

    def __call__(self, event) -> None:
        if isinstance(event, BestFileSaved):
            self.best_file, self.best_loss = event.path, event.loss
        elif isinstance(event, StoppedEarly):
            self.stop_reason = event.message


def _route_library_logs() -> None:
    """diffusers and transformers print to stderr on their own; send them to our log file."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
