"""The text ``lora-train check`` prints: the dataset as training will see it.

Plain text, columns aligned, at most 80 characters wide: the folders (images, repeats,
captions and file problems), how regularization images were balanced, the buckets, the step
maths and which files will be written, then the problems (which stop a run) and the
advisories. With a dataset_config, folders, balance and buckets are shown per dataset, with
each dataset's resolution and batch size and every subset option that differs from the
profile. Rendering only: it computes nothing the plan does not already hold.
"""

from __future__ import annotations

import dataclasses
import json

from lora_core.checks import dataset as dataset_checks
from lora_core.checks.problem import Problem, errors_of, warnings_of
from lora_core.dataset.plan import DatasetPlan, TrainingPlan, validation_timesteps
from lora_core.dataset.scan import DatasetScan, SubsetScan
from lora_core.dataset.subset_options import options_from_dataset_section
from lora_core.profile import Profile

WIDTH = 80
_NAME_WIDTH = 22
# Folder table: (header, width) of each number column, right-aligned.
_COLUMNS = (("images", 6), ("rep", 4), ("samples", 7), ("capt", 5), ("none", 5),
            ("other", 5), ("bad", 4), ("small", 5))
# File-name lists longer than this are shown as head ... tail.
_MAX_FILES = 6


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _wrap(text: str, indent: str = "  ", first: str = "  ") -> list[str]:
    """Greedy word wrap to WIDTH (long paths are kept whole rather than broken)."""
    lines: list[str] = []
    current = first
    for word in text.split(" "):
        prefix = first if not lines else indent
        if current != prefix and len(current) + 1 + len(word) > WIDTH:
            lines.append(current)
            current = indent + word
        else:
            current = current + word if current == prefix else current + " " + word
    lines.append(current)
    return lines


def _folder_row(label: str, subset: SubsetScan) -> str:
    values = (len(subset.images), subset.repeats, len(subset.images) * subset.repeats,
              subset.captions_found, len(subset.missing_captions),
              len(subset.other_extension_captions), len(subset.undecodable),
              len(subset.too_small))
    widths = [width for _, width in _COLUMNS]
    cells = " ".join(f"{value:>{width}}" for value, width in zip(values, widths, strict=True))
    return f"  {_clip(label, _NAME_WIDTH):<{_NAME_WIDTH}} {cells}"


def _folder_table(scan: DatasetScan) -> list[str]:
    header = " ".join(f"{name:>{width}}" for name, width in _COLUMNS)
    lines = [f"  {'folder':<{_NAME_WIDTH}} {header}"]
    for subset in scan.train:
        lines.append(_folder_row(subset.name, subset))
    for subset in scan.reg:
        lines.append(_folder_row("reg/" + subset.name, subset))
    lines += _wrap(f"samples = images x repeats; capt = caption files found; none = no "
                   f"{scan.caption_extension} caption (class tokens used); other = caption "
                   f"only under another extension; bad = cannot be opened; small = under "
                   f"{scan.min_side_px} px on a side")
    return lines


def _value(value: object) -> str:
    """A value as the config file would spell it."""
    return json.dumps(value) if not isinstance(value, float) else f"{value:g}"


def _option_lines(subset: SubsetScan, profile: Profile) -> list[str]:
    """The subset's options that differ from the profile's [dataset] values, with the key
    that set each one."""
    base = options_from_dataset_section(profile.dataset)
    sources = subset.spec.sources if subset.spec is not None else {}
    changed = []
    for f in dataclasses.fields(subset.options):
        value = getattr(subset.options, f.name)
        if value != getattr(base, f.name):
            source = sources.get(f.name, "")
            level = source.rsplit(".", 1)[0] if source else "profile"
            changed.append(f"{f.name} = {_value(value)} ({level})")
    if not changed:
        return []
    label = ("reg/" if subset.is_reg else "") + subset.name
    return [f"    {label}:", *(line for text in changed
                               for line in _wrap(text, indent="          ", first="      "))]


def _dataset_header(dataset: DatasetPlan, scan: DatasetScan) -> str:
    spec = scan.config.datasets[dataset.index] if scan.config else None
    width, height = dataset.bucket.resolution
    mode = {"aspect": f"buckets {dataset.bucket.min_bucket_reso}-"
                      f"{dataset.bucket.max_bucket_reso} step {dataset.bucket.bucket_reso_steps}",
            "no_upscale": "buckets without upscaling", "single": "bucketing off"}
    text = (f"datasets[{dataset.index}]: resolution {width}x{height}, batch size "
            f"{dataset.batch_size}, {mode[dataset.bucket.mode]}")
    if spec is not None and spec.sources:
        text += "; from the config: " + ", ".join(sorted(spec.sources))
    return text


def _config_folders(scan: DatasetScan, plan: TrainingPlan | None,
                    profile: Profile) -> list[str]:
    """The folder table of each dataset, then the options that differ from the profile."""
    header = " ".join(f"{name:>{width}}" for name, width in _COLUMNS)
    lines: list[str] = []
    assert scan.config is not None
    for spec in scan.config.datasets:
        if spec.index:
            lines.append("")
        dataset = plan.datasets[spec.index] if plan is not None else None
        if dataset is not None:
            lines += _wrap(_dataset_header(dataset, scan), indent="    ")
        else:
            width, height = spec.resolution
            lines.append(f"  datasets[{spec.index}]: resolution {width}x{height}, batch size "
                         f"{spec.batch_size}")
        members = sorted((s for s in scan.subsets if s.dataset_index == spec.index),
                         key=lambda s: s.spec.subset_index if s.spec else 0)
        if not members:
            lines.append("    no subsets used")
            continue
        lines.append(f"  {'folder':<{_NAME_WIDTH}} {header}")
        for subset in members:
            lines.append(_folder_row(("reg/" if subset.is_reg else "") + subset.name, subset))
        options = [line for subset in members for line in _option_lines(subset, profile)]
        if options:
            lines += ["  options that differ from the profile (and where they are set):",
                      *options]
    lines += _wrap("samples = images x repeats; capt = caption files found; none = no "
                   "caption file under the subset's caption_extension (class_tokens used); "
                   "other = caption only under another extension; bad = cannot be opened; "
                   "small = under the dataset's smallest bucket side")
    return lines


def _files(names: list[str]) -> str:
    if len(names) > _MAX_FILES:
        names = [*names[:_MAX_FILES - 2], "...", names[-1]]
    return ", ".join(names)


def _reg_section(plan: TrainingPlan) -> list[str]:
    if plan.dataset_config is None:
        return _reg_lines(plan, plan.datasets[0], "  ")
    lines: list[str] = []
    for dataset in plan.datasets:
        lines.append(f"  datasets[{dataset.index}]:")
        lines += _reg_lines(plan, dataset, "    ")
    return lines


def _reg_lines(plan: TrainingPlan, dataset: DatasetPlan, pad: str) -> list[str]:
    reg = [plan.subsets[i] for i in dataset.subset_indices if plan.subsets[i].is_reg]
    if not reg:
        return [f"{pad}no regularization images"]
    lines = [f"{pad}train samples per epoch (images x repeats): {dataset.num_train_images}",
             f"{pad}reg images x repeats in the folders:        {dataset.num_reg_images}",
             f"{pad}reg samples per epoch after balancing:      {dataset.num_reg_samples}"]
    for subset in reg:
        used = [r for r in subset.effective_repeats if r > 0]
        if not used:
            change = "not used at all"
        elif min(used) == max(used) == subset.scan.repeats:
            change = f"repeats {subset.scan.repeats} unchanged"
        elif min(used) == max(used):
            change = f"repeats {subset.scan.repeats} -> {min(used)}"
        else:
            raised = sum(1 for r in used if r == max(used))
            change = (f"repeats {subset.scan.repeats} -> {min(used)}-{max(used)} "
                      f"({raised} image(s) at {max(used)})")
        unused = len(subset.effective_repeats) - len(used)
        tail = f"; {unused} image(s) unused" if unused else ""
        lines += _wrap(f"reg/{subset.name}: {change}{tail}", indent=pad + "  ",
                       first=pad)
    lines += _wrap("sd-scripts adds reg images in order until they match the train samples, "
                   "so an epoch holds about twice the train samples.", indent=pad, first=pad)
    return lines


def _bucket_section(plan: TrainingPlan) -> list[str]:
    if plan.dataset_config is None:
        return _bucket_lines(plan.datasets[0], "")
    lines: list[str] = []
    for dataset in plan.datasets:
        lines += _bucket_lines(dataset, f"datasets[{dataset.index}]: ")
    return lines


def _bucket_lines(dataset: DatasetPlan, title: str) -> list[str]:
    mode = {"aspect": "aspect-ratio buckets", "no_upscale": "buckets without upscaling",
            "single": "one bucket (bucketing off)"}[dataset.bucket.mode]
    width, height = dataset.bucket.resolution
    lines = [f"  {title}{mode}, resolution {width}x{height}"]
    cells = [f"{w:>4}x{h:<4} {count:>6}" for (w, h), count in dataset.bucket_counts.items()]
    # Three "WxH count" cells per line keep the table inside 80 columns.
    for start in range(0, len(cells), 3):
        lines.append("    " + "    ".join(cells[start:start + 3]))
    lines.append(f"  mean aspect-ratio error (without repeats): {dataset.mean_ar_error:.4f}")
    return lines


def _steps_section(plan: TrainingPlan) -> list[str]:
    sizes = (str(plan.batch_size) if plan.dataset_config is None else
             " / ".join(f"{d.batch_size} (datasets[{d.index}])" for d in plan.datasets))
    lines = [
        *_wrap(f"batch size {sizes}, gradient accumulation "
               f"{plan.gradient_accumulation_steps}, processes {plan.num_processes}"),
        f"  batches per epoch:  {plan.batches_per_epoch:>8}   (per bucket: ceil(samples / "
        "batch size))",
        f"  steps per epoch:    {plan.steps_per_epoch:>8}",
        f"  epochs:             {plan.num_epochs:>8}",
        f"  total steps:        {plan.max_train_steps:>8}",
        f"  warm-up steps:      {plan.warmup_steps:>8}",
    ]
    return lines


def _validation_section(plan: TrainingPlan, profile: Profile) -> list[str]:
    tr = profile.training
    splits = sorted({d.validation_split for d in plan.datasets})
    when = (f"every {tr.validate_every_n_epochs} epochs" if tr.validate_every_n_epochs
            else "every epoch")
    if tr.validate_every_n_steps:
        when += f" and every {tr.validate_every_n_steps} steps"
    batches = len(plan.validation_batches)
    if tr.max_validation_steps is not None and tr.max_validation_steps < batches:
        batches = tr.max_validation_steps
    timesteps = ", ".join(map(str, validation_timesteps(tr.min_timestep, tr.max_timestep)))
    lines = _wrap(f"validation_split {' / '.join(f'{s:g}' for s in splits)}, seed "
                  f"{plan.validation_seed}: {plan.num_validation_images} held-out image(s), "
                  f"never trained on; {batches} batch(es) measured at timesteps {timesteps}, "
                  f"{when}")
    names = [f"{r.path.parent.name}/{r.path.name}" for r in plan.held_out]
    lines += _wrap(f"held out: {_files(names)}", indent="    ")
    return lines


def _checkpoint_section(plan: TrainingPlan) -> list[str]:
    lines: list[str] = []
    if plan.epoch_save_points:
        names = [plan.epoch_file_name(e) for e in plan.epoch_save_points]
        lines += _wrap(f"every {plan.save_every_n_epochs} epoch(s), {len(names)} file(s): "
                       f"{_files(names)}", indent="    ")
    if plan.step_save_points:
        names = [plan.step_file_name(s) for s in plan.step_save_points]
        lines += _wrap(f"every {plan.save_every_n_steps} step(s), {len(names)} file(s): "
                       f"{_files(names)}", indent="    ")
    if not lines:
        lines.append("  no intermediate files (save_every_n_epochs/steps unset)")
    lines.append(f"  final: {plan.final_file_name} after step {plan.max_train_steps}")
    return lines


def _sample_section(plan: TrainingPlan, profile: Profile) -> list[str]:
    from lora_core.training.sample_prompts import sample_points  # torch-free

    sample = profile.sample
    if not sample.sample_prompts:
        return ["  sample images: none ([sample] sample_prompts unset)"]
    points = sample_points(sample, plan.max_train_steps, plan.steps_per_epoch, plan.num_epochs)
    if not points:
        return ["  sample images: none (set sample_every_n_steps, sample_every_n_epochs or "
                "sample_at_first)"]
    shown = ", ".join(str(p) for p in points[:12]) + (" ..." if len(points) > 12 else "")
    before = " (0 = before training)" if 0 in points else ""
    return _wrap(f"sample images ({sample.sample_sampler}) in sample/ after step(s): {shown}"
                 f"{before}", indent="    ")


def render_errors(problems: list[Problem]) -> list[str]:
    """The "Problems" section: the errors, which stop a run, each with its hint."""
    errors = errors_of(problems)
    lines = [f"Problems ({len(errors)})" + (": these stop a run" if errors else "")]
    for problem in errors:
        lines += _wrap(problem.message, indent="    ", first="  - ")
        if problem.hint:
            lines += _wrap(f"hint: {problem.hint}", indent="      ", first="    ")
    if not errors:
        lines.append("  none")
    return lines


def render_notes(problems: list[Problem]) -> list[str]:
    """The "Advisories" section: the warnings, worth reading, never stopping a run."""
    notes = warnings_of(problems)
    lines = [f"Advisories ({len(notes)})"]
    for problem in notes:
        lines += _wrap(problem.text(), indent="    ", first="  - ")
    if not notes:
        lines.append("  none")
    return lines


def render_check_report(scan: DatasetScan | None, plan: TrainingPlan | None, profile: Profile,
                        problems: list[Problem], with_errors: bool = True) -> str:
    """The full check report: the dataset and plan as training will see them (either may be
    None when it could not be made), then the advisories and (``with_errors``) the
    problems that stop a run."""
    from lora_core.models.loading import describe_model

    model = describe_model(profile.model.pretrained_model_name_or_path, profile.base_dir)
    if scan is None:
        lines = [f"Model: {model}", "", "No dataset report: the dataset could not be read "
                 "(see Problems)."]
    elif scan.config is not None:
        count = len(scan.config.datasets)
        lines = [f"Model: {model}",
                 f"Dataset config: {scan.config.path} ({count} dataset{'s' * (count != 1)})",
                 "Captions: <image file name without extension><caption_extension of the "
                 "subset>", "", "Datasets", *_config_folders(scan, plan, profile)]
    else:
        lines = [f"Model: {model}", f"Dataset: {scan.train_dir}"]
        if scan.reg_dir is not None:
            lines.append(f"Regularization: {scan.reg_dir}")
        lines.append(f"Captions: <image file name without extension>{scan.caption_extension}")
        lines += ["", "Folders", *_folder_table(scan)]
    if scan is not None:
        masks = [(s, text) for s in scan.subsets
                 if (text := dataset_checks.mask_summary(s)) is not None]
        if masks:
            lines += ["", "Loss masks" + (" (masked_loss)" if profile.training.masked_loss
                                          else " (alpha_mask)")]
            for subset, text in masks:
                lines += _wrap(f"{subset.label}: {text}", indent="    ")
    if scan is not None and scan.skipped:
        lines.append("  skipped:")
        for folder, reason in scan.skipped:
            text = reason if scan.config is not None else f"{folder.name}: {reason}"
            lines += _wrap(text, indent="      ", first="    ")
    if plan is not None:
        lines += ["", "Regularization balance", *_reg_section(plan)]
        lines += ["", "Buckets (samples per epoch, with repeats)", *_bucket_section(plan)]
        lines += ["", "Steps", *_steps_section(plan)]
        if plan.validation_batches:
            lines += ["", "Validation", *_validation_section(plan, profile)]
        lines += ["", f"Files written to {profile.saving.output_dir or '(output_dir unset)'}",
                  *_checkpoint_section(plan), *_sample_section(plan, profile)]
    elif scan is not None:
        lines += ["", "No training plan: the dataset has no usable training images."]
    lines += ["", *render_notes(problems)]
    if with_errors:
        lines += ["", *render_errors(problems)]
    return "\n".join(lines) + "\n"
