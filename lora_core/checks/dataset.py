"""Checks of the dataset as the scan found it, and of the plan made from it.

Errors stop a run: sd-scripts would crash on them or train on nothing (no usable training
image, an image that cannot be opened, a caption that is not text), an output folder inside a
dataset folder, a text-encoder cache that subsets with changing captions rule out. Warnings are
worth reading: missing captions (which train with the class tokens), captions under another
extension, images smaller than the smallest bucket, regularization images never used. Each
problem names the folder or file, and the profile field that points at it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lora_core.checks.problem import Problem, error, warning
from lora_core.dataset.plan import TrainingPlan, balance_reg_repeats
from lora_core.dataset.scan import DatasetScan, SubsetScan
from lora_core.profile import Profile

_MAX_LISTED = 5


def _names(paths: Iterable[Path]) -> str:
    paths = list(paths)
    shown = ", ".join(p.name for p in paths[:_MAX_LISTED])
    return shown + (f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else "")


def _field(scan: DatasetScan, subset: SubsetScan | None = None) -> dict[str, str]:
    """The profile field behind a subset (or the whole dataset)."""
    if scan.config is not None:
        return {"section": "dataset", "key": "dataset_config"}
    key = "reg_data_dir" if subset is not None and subset.is_reg else "train_data_dir"
    return {"section": "dataset", "key": key}


def scan_problems(scan: DatasetScan) -> list[Problem]:
    """Findings that must stop a run."""
    found: list[Problem] = []
    if scan.config is not None and not any(subset.images for subset in scan.train):
        folders = ", ".join(s.spec.where for s in scan.train if s.spec) or "none"
        found.append(error(f"no usable training images in any train subset of dataset_config "
                           f"{scan.config.path} (train subsets: {folders})",
                           "put .png/.jpg/.jpeg/.webp/.bmp images in their image_dir folders, "
                           "or add a subset without is_reg = true", **_field(scan),
                           path=scan.config.path))
    elif not any(subset.images for subset in scan.train):
        folders = ", ".join(s.name for s in scan.train)
        found.append(error(f"no usable training images in any folder under {scan.train_dir} "
                           f"(folders: {folders})", "put .png/.jpg/.jpeg/.webp/.bmp images in "
                           "the <repeats>_<name> folders", **_field(scan), path=scan.train_dir))
        # The images may be there, one level too deep: say where, and what to do.
        found += [error(f"{subset.label}: its images are in the subfolder "
                        f"{', '.join(d.name + '/' for d in subset.nested_image_dirs)}, which is "
                        "not read (sd-scripts does not look into subfolders)",
                        f"move them up into {subset.folder}", **_field(scan, subset),
                        path=subset.folder)
                  for subset in scan.train if subset.nested_image_dirs]
    for subset in scan.subsets:
        for what, entries, fix in (
                ("cannot open image {} ({})", subset.undecodable,
                 "delete it, or re-save it as a PNG/JPEG of ordinary size"),
                ("caption file {} is {}", subset.bad_captions, "re-save it as UTF-8")):
            found += [error(f"{subset.label}: {what.format(path.name, reason)}", fix,
                            **_field(scan, subset), path=path)
                      for path, reason in entries[:_MAX_LISTED]]
            if len(entries) > _MAX_LISTED:
                found.append(error(f"{subset.label}: {len(entries) - _MAX_LISTED} more like "
                                   "this", fix, **_field(scan, subset), path=subset.folder))
    return found


def scan_notes(scan: DatasetScan) -> list[Problem]:
    """Findings worth reading that do not stop a run."""
    notes = [warning(text, **_field(scan)) for text in scan.warnings]
    for subset in scan.subsets:
        spot = {**_field(scan, subset), "path": subset.folder}
        label = subset.label if subset.spec else f"{'reg ' if subset.is_reg else ''}{subset.name}"
        ext = scan.caption_extension_of(subset)
        missing = subset.missing_captions
        if missing:
            if subset.spec is not None:
                used = (f"the caption \"{subset.class_tokens}\" (class_tokens of "
                        f"{subset.spec.where})" if subset.class_tokens else
                        f"an EMPTY caption ({subset.spec.where} sets no class_tokens)")
            else:
                used = (f"the caption \"{subset.class_tokens}\" (class tokens from the folder "
                        "name)" if subset.class_tokens else "an EMPTY caption (the folder name "
                        "has no class tokens after the repeats)")
            notes.append(warning(f"{label}: {len(missing)} of {len(subset.images)} images have "
                                 f"no {ext} caption file and train with {used}: "
                                 f"{_names(missing)}", **spot))
        if subset.other_extension_captions:
            other = subset.other_extension_captions[0][1].suffix
            notes.append(warning(
                f"{label}: {len(subset.other_extension_captions)} image(s) have a caption file "
                f"only under another extension, which is not read (e.g. "
                f"{subset.other_extension_captions[0][1].name})",
                f"set caption_extension = \"{other}\" if those are your captions", **spot))
        if subset.empty_captions:
            empty = "no text" if subset.options.enable_wildcard else "an empty first line"
            notes.append(warning(f"{label}: {len(subset.empty_captions)} caption file(s) have "
                                 f"{empty}; the class tokens are used instead: "
                                 f"{_names(subset.empty_captions)}", **spot))
        if subset.multiline_captions:
            notes.append(warning(f"{label}: {len(subset.multiline_captions)} caption file(s) "
                                 "have more than one line; only the first line is used: "
                                 f"{_names(subset.multiline_captions)}", **spot))
        if subset.bom_captions:
            notes.append(warning(f"{label}: {len(subset.bom_captions)} caption file(s) start "
                                 "with a UTF-8 byte-order mark, which was removed (sd-scripts "
                                 "would keep it in the first tag): "
                                 f"{_names(subset.bom_captions)}", **spot))
        if subset.too_small:
            notes.append(warning(f"{label}: {len(subset.too_small)} image(s) are smaller than "
                                 f"{subset.min_side_px} px on a side and will be enlarged "
                                 f"(blurry training data): {_names(subset.too_small)}", **spot))
    return notes + _reg_surplus_notes(scan)


def _reg_surplus_notes(scan: DatasetScan) -> list[Problem]:
    """Reg images the balancing never uses, per dataset (§1.4 balances each one alone)."""
    notes = []
    for index in sorted({s.dataset_index for s in scan.reg}):
        train = [s for s in scan.train if s.dataset_index == index]
        num_train = sum(s.repeats * len(s.images) for s in train)
        reg_repeats = [s.repeats for s in scan.reg if s.dataset_index == index
                       for _ in s.images]
        unused = sum(1 for r in balance_reg_repeats(num_train, reg_repeats) if r == 0)
        if not unused:
            continue
        where = f"datasets[{index}]: " if scan.config is not None else ""
        spot = _field(scan) if scan.config is not None else {"section": "dataset",
                                                             "key": "reg_data_dir"}
        notes.append(warning(
            f"{where}{unused} of {len(reg_repeats)} regularization images are never used: "
            f"sd-scripts takes reg images in order only until they match the {num_train} train "
            "samples per epoch (images x repeats)",
            "remove the surplus or add train images/repeats" if num_train else
            "this dataset has no train images, so none of its reg images are used", **spot))
    return notes


def output_inside_subsets(profile: Profile, scan: DatasetScan) -> list[Problem]:
    """The output-folder rule for the image folders a dataset_config names."""
    output_dir = profile.path("saving", "output_dir")
    if scan.config is None or output_dir is None:
        return []
    return [error(f"`[saving] output_dir` {output_dir} is inside the image_dir of "
                  f"{subset.spec.where} ({subset.folder}); lora-train never writes into a "
                  "dataset", "choose a folder outside it", section="saving", key="output_dir",
                  path=output_dir)
            for subset in scan.subsets if subset.spec is not None
            and (output_dir == subset.folder or subset.folder in output_dir.parents)]


def plan_problems(profile: Profile, plan: TrainingPlan) -> list[Problem]:
    """What the plan rules out: caching text-encoder outputs when some subset's captions
    change between steps (a dataset_config can turn caption shuffling on per subset)."""
    ds, found = profile.dataset, []
    wanted = ds.cache_text_encoder_outputs or ds.cache_text_encoder_outputs_to_disk
    varying = [s.name for s in plan.subsets if s.scan.options.captions_vary]
    # (a trained text encoder is refused by the profile rules already)
    if wanted and profile.network.network_train_unet_only and varying:
        key = ("cache_text_encoder_outputs_to_disk" if ds.cache_text_encoder_outputs_to_disk
               else "cache_text_encoder_outputs")
        found.append(error(
            f"`[dataset] {key}` cannot be used: the captions of subset(s) "
            f"{', '.join(varying)} change between steps (shuffle_caption, caption dropout, "
            "wildcards or token_warmup_step)",
            f"turn off {key}, or turn off the caption options that change captions in every "
            "subset", section="dataset", key=key))
    found += _validation_notes(profile, plan)
    return found + [warning(text, section="dataset") for text in plan.warnings]


def _validation_notes(profile: Profile, plan: TrainingPlan) -> list[Problem]:
    tr = profile.training
    splits = any(d.validation_split > 0 for d in plan.datasets)
    if splits and not plan.validation_batches:
        return [warning("validation_split holds out no image: each training folder keeps at "
                        "least one image and holds out its image count x validation_split "
                        "rounded down, so no validation loss is measured",
                        "add images or raise validation_split (0.1 holds out 1 image in 10)",
                        section="training", key="validation_split")]
    asked = [k for k in ("validate_every_n_steps", "validate_every_n_epochs",
                         "max_validation_steps") if getattr(tr, k) is not None]
    if asked and not splits:
        return [warning(f"`[training] {asked[0]}` has no effect without validation_split",
                        "set `[training] validation_split` (0.1 or 0.2 is usual) to hold out "
                        "images and measure validation loss",
                        section="training", key=asked[0])]
    return []


def mask_problems(profile: Profile, scan: DatasetScan) -> list[Problem]:
    """Masked loss (``masked_loss``, ``alpha_mask``, subsets' ``conditioning_data_dir``):
    mask folders without masked_loss, images without their mask, and masking that masks
    nothing."""
    found: list[Problem] = []
    masked = profile.training.masked_loss
    with_dir = [s for s in scan.subsets if s.mask_dir is not None]
    for subset in with_dir:
        where = subset.spec.where if subset.spec else subset.label
        if not masked:
            found.append(error(
                f"`{where}.conditioning_data_dir` = {subset.mask_dir} holds mask images, "
                "which are used for masked loss only",
                "set `[training] masked_loss = true` to train with them, or remove "
                "conditioning_data_dir (ControlNet training is not supported)",
                **_field(scan, subset), path=subset.mask_dir))
        elif subset.missing_masks:
            found.append(error(
                f"{subset.label}: {len(subset.missing_masks)} of {len(subset.images)} image(s) "
                f"have no mask in {subset.mask_dir}: {_names(subset.missing_masks)}",
                "add a mask with the same file name (any image extension) for each: white "
                "where the image trains, black where it does not",
                **_field(scan, subset), path=subset.mask_dir))
    alpha = [s for s in scan.subsets if s.options.alpha_mask and s.mask_dir is None]
    for subset in alpha:
        if subset.images and not any(r.has_alpha for r in subset.images):
            found.append(warning(
                f"{subset.label}: alpha_mask is on but none of its images has transparency, "
                "so every image trains everywhere",
                "save the images as PNG or WebP with an alpha channel (transparent where they "
                "must not train)", **_field(scan, subset), path=subset.folder))
    if masked and not with_dir and not alpha:
        found.append(warning(
            "`[training] masked_loss` is on, but no subset has masks: set `[dataset] "
            "alpha_mask = true` to use the images' transparency, or give dataset_config "
            "subsets a conditioning_data_dir of mask images", section="training",
            key="masked_loss"))
    return found


def mask_summary(subset: SubsetScan) -> str | None:
    """Which of a subset's images have masks, for the check report (None: no masks)."""
    total = len(subset.images)
    if subset.mask_dir is not None:
        have = total - len(subset.missing_masks)
        return f"masks: {have} of {total} image(s) have a mask image in {subset.mask_dir}"
    if subset.options.alpha_mask:
        have = sum(1 for r in subset.images if r.has_alpha)
        return (f"masks: {have} of {total} image(s) have transparency (alpha_mask); the "
                "others train everywhere")
    return None
