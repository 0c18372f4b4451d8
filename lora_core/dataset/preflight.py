"""The dataset check that runs before anything heavy: scan the folders, build the plan.

``lora-train check`` and ``lora-train run`` call the same function, so the plan a user
was shown is the plan that runs. Pure Python + PIL headers: no torch, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_core.dataset.plan import TrainingPlan, make_plan
from lora_core.dataset.scan import DatasetScan, advisories, problems, scan_dataset
from lora_core.errors import DatasetError
from lora_core.profile import DatasetSection, Profile, parse_resolution


@dataclass
class Preflight:
    scan: DatasetScan
    plan: TrainingPlan
    problems: list[str]
    advisories: list[str]


def smallest_side_px(ds: DatasetSection) -> int:
    """Images smaller than this on a side get enlarged (or cannot be bucketed)."""
    if not ds.enable_bucket:
        return min(parse_resolution(ds.resolution))
    return ds.bucket_reso_steps if ds.bucket_no_upscale else ds.min_bucket_reso


def run_preflight(profile: Profile, strict: bool = True, num_processes: int = 1) -> Preflight:
    """Scan and plan. With ``strict`` a dataset problem raises DatasetError listing all."""
    ds = profile.dataset
    scan = scan_dataset(profile.path("dataset", "train_data_dir"),
                        profile.path("dataset", "reg_data_dir"),
                        ds.caption_extension, smallest_side_px(ds))
    found = problems(scan)
    if found and strict:
        raise DatasetError(
            f"the dataset has {len(found)} problem{'s' if len(found) > 1 else ''}:\n  - "
            + "\n  - ".join(found),
            "fix or remove the files named above (the dataset is never changed by "
            "lora-train); `lora-train check PROFILE` shows the full report")
    plan = make_plan(profile, scan, num_processes)
    return Preflight(scan, plan, found, advisories(scan) + list(getattr(plan, "warnings", [])))
