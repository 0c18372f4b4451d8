"""The text ``lora-train check`` prints: the dataset as training will see it.

Plain text, columns aligned, at most 80 characters wide: the folders (images, repeats,
captions and file problems), how regularization images were balanced, the buckets, the step
maths and which files will be written, then the problems (which stop a run) and the
advisories. Rendering only: it computes nothing the plan does not already hold.
"""

from __future__ import annotations

from lora_core.dataset.plan import TrainingPlan
from lora_core.dataset.scan import DatasetScan, SubsetScan, advisories, problems
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


def _files(names: list[str]) -> str:
    if len(names) > _MAX_FILES:
        names = [*names[:_MAX_FILES - 2], "...", names[-1]]
    return ", ".join(names)


def _reg_section(plan: TrainingPlan) -> list[str]:
    reg = [s for s in plan.subsets if s.is_reg]
    if not reg:
        return ["  no regularization images"]
    lines = [f"  train samples per epoch (images x repeats): {plan.num_train_images}",
             f"  reg images x repeats in the folders:        {plan.num_reg_images}",
             f"  reg samples per epoch after balancing:      {plan.num_reg_samples}"]
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
        lines += _wrap(f"reg/{subset.name}: {change}{tail}", indent="    ")
    lines += _wrap("sd-scripts adds reg images in order until they match the train samples, "
                   "so an epoch holds about twice the train samples.")
    return lines


def _bucket_section(plan: TrainingPlan) -> list[str]:
    mode = {"aspect": "aspect-ratio buckets", "no_upscale": "buckets without upscaling",
            "single": "one bucket (bucketing off)"}[plan.bucket.mode]
    width, height = plan.bucket.resolution
    lines = [f"  {mode}, resolution {width}x{height}"]
    cells = [f"{w:>4}x{h:<4} {count:>6}" for (w, h), count in plan.bucket_counts.items()]
    # Three "WxH count" cells per line keep the table inside 80 columns.
    for start in range(0, len(cells), 3):
        lines.append("    " + "    ".join(cells[start:start + 3]))
    lines.append(f"  mean aspect-ratio error (without repeats): {plan.mean_ar_error:.4f}")
    return lines


def _steps_section(plan: TrainingPlan) -> list[str]:
    lines = [
        f"  batch size {plan.batch_size}, gradient accumulation "
        f"{plan.gradient_accumulation_steps}, processes {plan.num_processes}",
        f"  batches per epoch:  {plan.batches_per_epoch:>8}   (per bucket: ceil(samples / "
        "batch size))",
        f"  steps per epoch:    {plan.steps_per_epoch:>8}",
        f"  epochs:             {plan.num_epochs:>8}",
        f"  total steps:        {plan.max_train_steps:>8}",
        f"  warm-up steps:      {plan.warmup_steps:>8}",
    ]
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


def render_check_report(scan: DatasetScan, plan: TrainingPlan | None, profile: Profile,
                        found: list[str] | None = None, notes: list[str] | None = None) -> str:
    """The full check report. ``plan`` may be None when it could not be made (for
    instance no usable images); the folder table and the findings are still shown.
    ``found`` / ``notes`` are the preflight's problems and advisories when it has them
    (they include the model and start-weights checks); else the scan's own."""
    from lora_core.models.loading import describe_model

    model = describe_model(profile.model.pretrained_model_name_or_path, profile.base_dir)
    lines = [f"Model: {model}", f"Dataset: {scan.train_dir}"]
    if scan.reg_dir is not None:
        lines.append(f"Regularization: {scan.reg_dir}")
    lines.append(f"Captions: <image file name without extension>{scan.caption_extension}")
    lines += ["", "Folders", *_folder_table(scan)]
    if scan.skipped:
        lines.append("  skipped:")
        for folder, reason in scan.skipped:
            lines += _wrap(f"{folder.name}: {reason}", indent="      ", first="    ")
    if plan is not None:
        lines += ["", "Regularization balance", *_reg_section(plan)]
        lines += ["", "Buckets (samples per epoch, with repeats)", *_bucket_section(plan)]
        lines += ["", "Steps", *_steps_section(plan)]
        lines += ["", f"Files written to {profile.saving.output_dir or '(output_dir unset)'}",
                  *_checkpoint_section(plan)]
    else:
        lines += ["", "No training plan: the dataset has no usable training images."]
    if found is None:
        found = problems(scan)
    if notes is None:
        notes = advisories(scan) + (plan.warnings if plan is not None else [])
    lines += ["", f"Problems ({len(found)})" + (": these stop a run" if found else "")]
    for text in found or ["none"]:
        lines += _wrap(text, indent="    ", first="  - " if found else "  ")
    lines += ["", f"Advisories ({len(notes)})"]
    for text in notes or ["none"]:
        lines += _wrap(text, indent="    ", first="  - " if notes else "  ")
    return "\n".join(lines) + "\n"
