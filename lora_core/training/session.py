"""One training run from a validated profile: preflight, run folder, model, train, finish.

This is what ``lora-train run`` (and later the wizard, through that command) executes. The
dataset check here is the same function ``lora-train check`` calls, so the plan the user
saw is the plan that runs. Errors are :class:`LoraError` with a message and hint; the CLI
turns them into an exit code and a ``run_failed`` event.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core.dataset.plan import TrainingPlan, metadata_fields, plan_summary
from lora_core.dataset.preflight import Preflight, run_preflight
from lora_core.events import EventBus, PhaseChanged, RunFinished, RunStarted, WarningIssued
from lora_core.profile import Profile
from lora_core.saving import lora_file
from lora_core.saving.runs import RunFolder, create_run_folder, record_last_run
from lora_core.saving.tag_summary import write_tag_summary

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_folder: RunFolder
    files: list[Path]
    interrupted: bool
    steps: int
    seconds: float


def _route_library_logs() -> None:
    """diffusers and transformers print to stderr on their own; send them to our log file."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()


@dataclass
class StartedRun:
    """What exists once a run has started, before any model is loaded."""

    preflight: Preflight
    folder: RunFolder
    output_name: str
    warnings: list[str]


def start_run(profile: Profile, profile_path: Path | None) -> StartedRun:
    """Everything before the model loads: check, name the outputs, make the run folder.

    An existing output name is never overwritten: the run saves under the next free
    ``<name>_N`` and says so in a warning.
    """
    preflight = run_preflight(profile)
    warnings = list(preflight.advisories)
    output_dir = profile.path("saving", "output_dir")
    wanted = profile.saving.output_name
    output_name = lora_file.free_output_name(output_dir, wanted)
    if output_name != wanted:
        warnings.append(f"files named {wanted!r} already exist in {output_dir}; this run "
                        f"saves as {output_name!r} so nothing is overwritten")
    folder = create_run_folder(output_dir, output_name, profile)
    record_last_run(folder, profile_path)
    return StartedRun(preflight, folder, output_name, warnings)


def run_training(profile: Profile, profile_path: Path | None, started_run: StartedRun,
                 bus: EventBus, stop_requested) -> RunResult:
    started = time.time()
    preflight, folder = started_run.preflight, started_run.folder
    output_name = started_run.output_name
    plan: TrainingPlan = preflight.plan
    seed = profile.training.seed if profile.training.seed is not None \
        else random.randint(0, 2**32 - 1)
    summary = plan_summary(plan)
    summary["seed"] = seed
    bus.emit(RunStarted(run_dir=str(folder.path), profile_path=str(profile_path or ""),
                        output_name=output_name, log_path=str(folder.log), plan=summary))
    for message in started_run.warnings:
        bus.emit(WarningIssued(message))

    # Heavy imports only now: `check` and the wizard never pay for torch.
    from accelerate.utils import set_seed

    from lora_core.models.loading import load_model
    from lora_core.saving.metadata import RunInfo, training_metadata
    from lora_core.training.optim import optimizer_description, warmup_steps
    from lora_core.training.trainer import WEIGHT_DTYPES, Outputs, TrainState, train

    _route_library_logs()
    set_seed(seed)
    bus.emit(PhaseChanged("loading model"))
    bundle = load_model(profile.model.pretrained_model_name_or_path, profile.base_dir,
                        WEIGHT_DTYPES[profile.training.mixed_precision])
    output_dir = profile.path("saving", "output_dir")
    if profile.saving.tag_summary:
        write_tag_summary(output_dir / f"{output_name}.txt", preflight.scan,
                          profile.saving.tag_summary_order)
    run = RunInfo(session_id=random.randint(0, 2**31), started_at=started, seed=seed,
                  output_name=output_name, model_name=bundle.model_name,
                  model_file=bundle.model_file,
                  optimizer_repr=optimizer_description(profile.optimizer),
                  warmup_steps=warmup_steps(profile.optimizer, plan.max_train_steps),
                  max_train_steps=plan.max_train_steps, num_epochs=plan.num_epochs)
    outputs = Outputs(output_dir=output_dir, output_name=output_name,
                      metadata=training_metadata(profile, metadata_fields(plan), run),
                      save_precision=profile.saving.save_precision)
    state = TrainState(seed=seed)
    interrupted = train(profile, plan, bundle, outputs, state, bus, stop_requested)
    seconds = time.time() - started
    bus.emit(RunFinished(files=[str(p) for p in outputs.written], steps=state.step,
                         seconds=seconds, interrupted=interrupted))
    return RunResult(folder, outputs.written, interrupted, state.step, seconds)


