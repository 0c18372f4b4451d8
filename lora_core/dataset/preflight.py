"""The check that runs before anything heavy: the model spec, the start weights, the
dataset folders and the plan.

``lora-train check`` and ``lora-train run`` call the same function, so the plan a user
was shown is the plan that runs. Pure Python + PIL headers + JSON: no torch, no model
weights read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_core.dataset.buckets import bucket_config
from lora_core.dataset.dataset_config import load_dataset_config
from lora_core.dataset.plan import TrainingPlan, make_plan
from lora_core.dataset.scan import DatasetScan, advisories, problems, scan_config, scan_dataset
from lora_core.dataset.subset_options import options_from_dataset_section
from lora_core.errors import DatasetError, LoraError, ProfileError
from lora_core.models.loading import ModelSource, inspect_model
from lora_core.profile import Profile


@dataclass
class Preflight:
    scan: DatasetScan
    plan: TrainingPlan | None  # None when no plan can be made (no usable images)
    problems: list[str]
    advisories: list[str]


def inspect_profile_model(profile: Profile) -> ModelSource | LoraError:
    """What the profile's base model is (headers only), or why it cannot be used."""
    try:
        return inspect_model(profile.model.pretrained_model_name_or_path, profile.base_dir)
    except LoraError as exc:
        return exc


def input_problems(profile: Profile, source: ModelSource | LoraError) -> list[str]:
    """Problems with the model and start-weights paths, found without loading anything.
    ``source`` is :func:`inspect_profile_model`'s answer."""
    found = []
    if isinstance(source, LoraError):
        found.append(f"{source.message} ({source.hint})" if source.hint else source.message)
    else:
        found.extend(model_problems(profile, source.family))
        if "VAE" in source.missing and not profile.model.vae:
            found.append(f"the checkpoint {source.path} has no VAE: set `[model] vae` to a VAE "
                         "file or folder")
    weights = profile.path("network", "network_weights")
    if weights is not None:
        problem = lora_file_problem(weights)
        if problem:
            found.append(f"`[network] network_weights` {problem}")
    from lora_core.training.optimizer_args import missing_optimizer_package  # torch-free
    from lora_core.training.sample_prompts import check_sample_prompts  # torch-free

    found.extend(check_sample_prompts(profile))
    missing = missing_optimizer_package(profile.optimizer)
    if missing:
        found.append(missing)
    output_dir = profile.path("saving", "output_dir")
    for key in ("train_data_dir", "reg_data_dir"):
        data_dir = profile.path("dataset", key)
        if data_dir is not None and output_dir is not None \
                and (output_dir == data_dir or data_dir in output_dir.parents):
            found.append(f"`[saving] output_dir` {output_dir} is inside `[dataset] {key}` "
                         f"{data_dir}; lora-train never writes into a dataset (choose a "
                         "folder outside it)")
    return found


def model_problems(profile: Profile, family: str | None) -> list[str]:
    """Settings that do not fit the detected model family (None: not known before loading)."""
    found = []
    if family is None:
        return found
    names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    if profile.model.v2 is not None and profile.model.v2 != (family == "sd2"):
        found.append(f"`[model] v2` = {str(profile.model.v2).lower()} but the model is "
                     f"{names.get(family, family)} (detected from its weights); remove v2")
    from lora_core.network.blocks import block_layout
    from lora_core.profile_rules import block_errors

    found.extend(block_errors(profile, block_layout(family)))
    steps = profile.dataset.bucket_reso_steps
    if family in ("sd1", "sd2") and profile.dataset.enable_bucket and steps % 64:
        found.append(f"`[dataset] bucket_reso_steps` = {steps} must be a multiple of 64 for "
                     f"{names[family]} models (32 is allowed for SDXL only)")
    return found


def lora_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a kohya LoRA file, from its header alone (no torch)."""
    if not path.is_file():
        return f"file not found: {path} (give an existing LoRA .safetensors file, or \"\" to " \
            "start fresh)"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # safetensors raises several types for a broken header
        return f"{path} is not a readable .safetensors file ({exc})"
    if not any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return (f"{path} is not a kohya-format LoRA (no lora_unet_/lora_te_ keys); "
                "give a LoRA file trained with sd-scripts or lora-train")
    return None


def scan_profile(profile: Profile) -> DatasetScan:
    """Scan the profile's dataset folders (or the subsets of its dataset_config), flagging
    images below the smallest bucket side."""
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


def _output_inside_subsets(profile: Profile, scan: DatasetScan) -> list[str]:
    """input_problems' output_dir rule for the image folders a dataset_config names."""
    output_dir = profile.path("saving", "output_dir")
    if scan.config is None or output_dir is None:
        return []
    return [f"`[saving] output_dir` {output_dir} is inside the image_dir of "
            f"{subset.spec.where} ({subset.folder}); lora-train never writes into a dataset "
            "(choose a folder outside it)"
            for subset in scan.subsets if subset.spec is not None
            and (output_dir == subset.folder or subset.folder in output_dir.parents)]


def run_preflight(profile: Profile, strict: bool = True, num_processes: int = 1) -> Preflight:
    """Check inputs, scan and plan. With ``strict`` any problem raises one error listing all."""
    scan = scan_profile(profile)
    source = inspect_profile_model(profile)
    found = (input_problems(profile, source) + _output_inside_subsets(profile, scan)
             + problems(scan))
    if found and strict:
        raise DatasetError(
            f"{len(found)} problem{'s' if len(found) > 1 else ''} must be fixed before "
            "training:\n  - " + "\n  - ".join(found),
            "fix the files or fields named above (lora-train never changes the dataset); "
            "`lora-train check PROFILE` shows the full report")
    plan = None
    try:
        plan = make_plan(profile, scan, num_processes)
    except (DatasetError, ProfileError) as exc:
        if strict:
            raise
        if not found:  # else it only restates a problem already listed
            found.append(exc.message)
    notes = (advisories(scan) + (plan.warnings if plan else [])
             + settings_advisories(profile, source))
    return Preflight(scan, plan, found, notes)


def settings_advisories(profile: Profile, source: ModelSource | LoraError) -> list[str]:
    """Settings that run but are probably not what was meant (sd-scripts warns about them).
    ``source`` is :func:`inspect_profile_model`'s answer (an unusable model is a problem,
    reported by :func:`input_problems`)."""
    from lora_core.models.loading import prediction_warning
    from lora_core.training.optimizer_args import optimizer_advisories  # torch-free

    notes = optimizer_advisories(profile.optimizer)
    family = None
    if not isinstance(source, LoraError):
        family = source.family
        warning = prediction_warning(source, profile.model.v_parameterization)
        if warning:
            notes.append(warning)
    if profile.model.clip_skip != 1 and family == "sdxl":
        notes.append("`[model] clip_skip` is ignored for SDXL models (sd-scripts ignores it too)")
    elif profile.model.clip_skip != 1 and family == "sd2":
        from lora_core.models.family_sd2 import clip_skip_warning

        notes.append(clip_skip_warning(profile.model.clip_skip))
    if profile.training.zero_terminal_snr and not profile.model.v_parameterization:
        notes.append("`[training] zero_terminal_snr` is meant for v-prediction models: with "
                     "noise prediction the last timestep has nothing left to predict (set "
                     "`[model] v_parameterization` = true if the model is a v-pred model)")
    return notes
