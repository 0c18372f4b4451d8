"""Every check in one place: what would stop a run before its first step, found without
loading weights.

``lora-train check`` prints :func:`check_profile`'s report, ``lora-train run`` calls the same
function before it loads anything and stops on its errors (:meth:`CheckReport.raise_for_errors`),
and the wizard runs it as answers are typed and shows each :class:`Problem` at the field it
names. So a profile that passes ``check`` starts, and one that does not never gets as far as
loading a model.

The modules, in the order the checks run:

* ``fields``: each value against its declaration (run while the profile is read);
* ``rules``: combinations of fields (run while the profile is read);
* ``optimizer``: optimizer_args, the schedule, the installed optimizer's signature (read
  from its source by ``class_source``, never imported: an optimizer named by import path
  too);
* ``inputs``: the base model and what loading it needs, start weights, sample prompts,
  the output folder;
* ``dataset``: the folders and captions as scanned, and the plan;
* ``machine``: what this machine cannot run (fp16 without CUDA).

This package sits above ``dataset``, ``models`` and ``training``, which never import it. Pure
Python: headers and text files only, never torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lora_core.checks import dataset as dataset_checks
from lora_core.checks import inputs, machine, optimizer, schedule
from lora_core.checks.problem import Problem, errors_of, raise_for_errors, warnings_of
from lora_core.dataset.buckets import bucket_config
from lora_core.dataset.dataset_config import load_dataset_config
from lora_core.dataset.plan import TrainingPlan, make_plan
from lora_core.dataset.scan import DatasetScan, scan_config, scan_dataset
from lora_core.dataset.subset_options import options_from_dataset_section
from lora_core.errors import CheckError, LoraError
from lora_core.models.loading import ModelSource
from lora_core.profile import Profile

__all__ = ["CheckReport", "Problem", "check_profile", "scan_profile"]

RUN_HINT = ("fix the files or fields named above (lora-train never changes the dataset); "
            "`lora-train check PROFILE` shows the full report")


@dataclass
class CheckReport:
    """What the checks found. ``scan`` and ``plan`` are None when they could not be made."""

    scan: DatasetScan | None
    plan: TrainingPlan | None
    model: ModelSource | LoraError
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return errors_of(self.problems)

    @property
    def warnings(self) -> list[Problem]:
        return warnings_of(self.problems)

    def raise_for_errors(self) -> None:
        """One CheckError listing every error (the run stops before anything heavy)."""
        raise_for_errors(self.problems, "the profile has", RUN_HINT, CheckError)


def scan_profile(profile: Profile) -> DatasetScan:
    """Scan the profile's dataset folders (or the subsets of its dataset_config), flagging
    images below the smallest bucket side. Raises LoraError when there is nothing to scan."""
    ds = profile.dataset
    config_path = profile.path("dataset", "dataset_config")
    if config_path is not None:
        return scan_config(load_dataset_config(config_path, ds,
                                               profile.training.train_batch_size))
    buckets, _ = bucket_config(ds)  # its warnings come with the plan
    return scan_dataset(profile.path("dataset", "train_data_dir"),
                        profile.path("dataset", "reg_data_dir"),
                        ds.caption_extension, buckets.smallest_side(),
                        options_from_dataset_section(ds))


def check_profile(profile: Profile, num_processes: int | None = None,
                  on: machine.Machine | None = None) -> CheckReport:
    """Run every check on a profile that was read without errors. ``num_processes``: the
    processes the run has (default: the profile's ``[training] num_processes``). ``on``: the
    machine to hold the settings against (default: probed without torch)."""
    if num_processes is None:
        num_processes = profile.training.num_processes
    source = inputs.inspect_profile_model(profile)
    problems = inputs.prediction_problems(profile, source)
    # The rest judge what a run uses: unset prediction settings as the model file decides.
    profile = inputs.resolved_prediction(profile, source)
    problems += inputs.input_problems(profile, source)
    scan = plan = None
    dataset_key = "dataset_config" if profile.dataset.dataset_config else "train_data_dir"
    try:
        scan = scan_profile(profile)
    except LoraError as exc:
        problems += _located(exc, "dataset", dataset_key)
    if scan is not None:
        problems += dataset_checks.output_inside_subsets(profile, scan)
        problems += dataset_checks.scan_problems(scan)
        problems += dataset_checks.mask_problems(profile, scan)
        try:
            plan = make_plan(profile, scan, num_processes)
        except LoraError as exc:
            if not errors_of(problems):  # else it only restates a problem already listed
                problems += _located(exc, "dataset", dataset_key)
        problems += dataset_checks.scan_notes(scan)
        if plan is not None:
            problems += dataset_checks.plan_problems(profile, plan)
            problems += schedule.plan_schedule_problems(profile, plan.max_train_steps,
                                                        plan.warmup_steps)
            name, notes = inputs.taken_name(profile.path("saving", "output_dir"),
                                            plan.output_name)
            plan = dataclasses.replace(plan, output_name=name)  # the names the run writes
            problems += notes
    problems += machine.machine_problems(profile, on or machine.ProbedMachine())
    problems += optimizer.optimizer_notes(profile)
    problems += inputs.model_notes(profile, source)
    return CheckReport(scan, plan, source, problems)


def _located(exc: LoraError, section: str, key: str) -> list[Problem]:
    from lora_core.checks.problem import from_error

    return from_error(exc, section=section, key=key)
