"""The live check behind the image steps and the review: lora_core's checks on the draft
(``lora_core.checks.check_profile``, what ``lora-train check`` runs), plus the one mistake the
wizard can fix with one key (a concept folder such as ``10_mychar`` picked instead of the
folder that contains it).

Runs in a worker thread (it reads image headers); pure lora_core, no torch, no textual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_core.checks import CheckReport, check_profile
from lora_core.dataset.scan import parse_folder_name
from lora_tui.draft import Draft

# Fields a later step asks for: the check runs before they are answered, so it uses a
# stand-in. None of them changes the scan or the plan.
_LATER_REQUIRED = {("saving", "output_dir"): "__not yet chosen__"}


@dataclass
class DatasetCheck:
    report: CheckReport | None  # None when the check could not run
    message: str | None = None  # why not (the engine's message)
    hint: str | None = None
    concept_parent: Path | None = None  # set train_data_dir to this to fix the mistake


def check_dataset(draft: Draft) -> DatasetCheck:
    """Scan the draft's image folders and plan the run, never raising for bad input."""
    validation = draft.validate(_LATER_REQUIRED)
    if validation.profile is None:
        problems = [m for key, msgs in validation.field_errors.items()
                    if key[0] == "dataset" for m in msgs] + validation.other_errors
        return DatasetCheck(None, "; ".join(problems) or "answer the fields above first")
    profile = validation.profile
    report = check_profile(profile)
    if report.scan is not None:
        return DatasetCheck(report)
    # The folders could not be read: say why, and offer the one-key fix for a concept folder
    # picked instead of the folder that contains it.
    failure = next((p for p in report.errors if p.section == "dataset"), None)
    train_dir = profile.path("dataset", "train_data_dir")
    parent = None
    if train_dir is not None and train_dir.is_dir() \
            and parse_folder_name(train_dir.name) is not None:
        parent = train_dir.parent
    return DatasetCheck(report, failure.message if failure else None,
                        failure.hint if failure else None, parent)
