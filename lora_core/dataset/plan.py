"""The training plan: which samples an epoch holds, how they batch, how many steps run.

Given a dataset scan and a profile, this module does sd-scripts' bookkeeping ahead of time:
regularization balancing (the "steps double" effect), bucket assignment, batches per epoch,
the step/epoch maths with gradient accumulation and several processes, the warm-up length,
and which checkpoint files will be written when. With a dataset_config there are several
datasets, and each does its own balancing, buckets and batching (sd-scripts makes one
DreamBoothDataset per [[datasets]] and concatenates them); folder mode is one dataset.
``lora-train check`` prints it, the run records it (``plan_summary``) and the LoRA file's
``ss_*`` metadata quotes it (``saving.metadata.dataset_metadata``; with a dataset_config
also ``saving.metadata.datasets_metadata``). Per-epoch batch order is derived from
(seed, epoch) alone so a run can be resumed mid-epoch. Pure Python; no torch, no file I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core import output_names as names
from lora_core.dataset.buckets import BucketConfig, Size, aspect_ratio_error, bucket_config
from lora_core.dataset.scan import DatasetScan, ImageRecord, SubsetScan
from lora_core.errors import DatasetError
from lora_core.profile import Profile

# plan_summary lists at most this many save points of each kind (an event must stay small).
_SUMMARY_LIST_LIMIT = 200


@dataclass(frozen=True)
class PlanItem:
    """One image as training uses it (repeats say how often per epoch)."""

    record: ImageRecord
    subset_index: int  # index into TrainingPlan.subsets (its .scan.options: how to load it)
    is_reg: bool
    repeats: int  # effective repeats: the folder's, or the balanced ones for reg images
    loss_weight: float  # prior_loss_weight for reg images, 1.0 for train images
    bucket_reso: Size
    resized_size: Size
    dataset_index: int = 0  # index into TrainingPlan.datasets
    is_validation: bool = False  # held out (validation_split): measured, never trained on


@dataclass
class SubsetPlan:
    """A scanned folder and how many times each of its images is used per epoch."""

    scan: SubsetScan
    effective_repeats: list[int]  # per image of scan.images; 0 = not trained on
    held_out: list[ImageRecord] = field(default_factory=list)  # validation images

    @property
    def name(self) -> str:
        return self.scan.name

    @property
    def is_reg(self) -> bool:
        return self.scan.is_reg

    @property
    def images_used(self) -> int:
        return sum(1 for r in self.effective_repeats if r > 0)

    @property
    def samples_per_epoch(self) -> int:
        return sum(self.effective_repeats)


@dataclass
class DatasetPlan:
    """One dataset: its own buckets, batch size and reg balance (one [[datasets]] table of
    a dataset_config; folder mode has exactly one)."""

    index: int
    subset_indices: list[int]  # into TrainingPlan.subsets, in registration order
    bucket: BucketConfig
    batch_size: int
    bucket_counts: dict[Size, int]  # bucket -> samples per epoch (with repeats), sorted
    bucket_items: dict[Size, list[int]]  # bucket -> item indices (without repeats), sorted
    mean_ar_error: float  # mean |aspect error| over its items, without repeats
    num_train_images: int
    num_reg_images: int
    num_reg_samples: int
    batches_per_epoch: int  # sum over its buckets of ceil(samples / batch_size)
    validation_split: float = 0.0
    validation_batches: list[list[int]] = field(default_factory=list)  # item indices


@dataclass
class TrainingPlan:
    # Folder mode: train subsets, then reg subsets. dataset_config: dataset by dataset,
    # each dataset's subsets in the order the file lists them.
    subsets: list[SubsetPlan]
    items: list[PlanItem]
    # The totals below are over all datasets (sd-scripts' DatasetGroup sums them too).
    num_train_images: int  # train images x repeats (sd-scripts' meaning)
    num_reg_images: int  # reg images x folder repeats, before balancing (sd-scripts' meaning)
    num_reg_samples: int  # reg samples per epoch after balancing
    bucket: BucketConfig  # the first dataset's (the only one in folder mode)
    # Bucket size -> samples per epoch / item indices, merged over datasets (with one
    # dataset, exactly that dataset's buckets); batching uses datasets[i].bucket_items.
    bucket_counts: dict[Size, int]
    bucket_items: dict[Size, list[int]]
    mean_ar_error: float  # mean |aspect error| over items, without repeats
    batch_size: int  # the largest dataset batch size (what memory must hold)
    gradient_accumulation_steps: int
    num_processes: int
    batches_per_epoch: int
    steps_per_epoch: int
    num_epochs: int
    max_train_steps: int
    warmup_steps: int
    save_every_n_epochs: int | None
    save_every_n_steps: int | None
    epoch_save_points: list[int]  # epochs (1-based) that write <name>-<epoch:06d>
    step_save_points: list[int]  # global steps that write <name>-step<step:08d>
    output_name: str
    warnings: list[str] = field(default_factory=list)
    datasets: list[DatasetPlan] = field(default_factory=list)
    dataset_config: Path | None = None  # the config file, in dataset_config mode
    # Validation (validation_split): the held-out items' batches, dataset by dataset and
    # bucket by bucket, always in this order; the seed of their noise.
    validation_batches: list[list[int]] = field(default_factory=list)
    validation_seed: int = 0
    # The loss is masked (masked_loss, or a subset with alpha_mask): batches carry masks.
    masked: bool = False

    @property
    def num_validation_images(self) -> int:
        return sum(len(batch) for batch in self.validation_batches)

    @property
    def held_out(self) -> list[ImageRecord]:
        return [record for subset in self.subsets for record in subset.held_out]

    @property
    def unused_reg_images(self) -> int:
        return sum(len(s.effective_repeats) - s.images_used for s in self.subsets if s.is_reg)

    @property
    def validation_images(self) -> list[PlanItem]:
        return [self.items[i] for batch in self.validation_batches for i in batch]

    def epoch_file_name(self, epoch: int) -> str:
        return names.epoch_file_name(self.output_name, epoch)

    def step_file_name(self, step: int) -> str:
        return names.step_file_name(self.output_name, step)

    @property
    def final_file_name(self) -> str:
        return names.final_file_name(self.output_name)

    def checkpoint_schedule(self) -> list[tuple[int, str]]:
        """(global step, file name) of every numbered file, in the order they are written.

        An epoch ends after exactly steps_per_epoch optimizer steps; at a step that is both
        a step save and an epoch end, the step file comes first (as in sd-scripts' loop).
        """
        events = [(s, 0, self.step_file_name(s)) for s in self.step_save_points]
        events += [(e * self.steps_per_epoch, 1, self.epoch_file_name(e))
                   for e in self.epoch_save_points]
        return [(step, name) for step, _, name in sorted(events)]


def balance_reg_repeats(num_train_images: int, reg_repeats: list[int]) -> list[int]:
    """sd-scripts' regularization balancing: effective repeats per reg image, 0 = unused.

    Reg images are taken in order, each with its folder's repeats, until their running sum
    reaches the train sample count; if one pass is not enough, further passes add 1 repeat
    to each image in order until it does. So an epoch holds about as many reg samples as
    train samples (never fewer), and surplus reg images are simply never used.
    """
    effective = [0] * len(reg_repeats)
    if sum(reg_repeats) == 0:
        return effective
    used = 0
    first_pass = True
    while used < num_train_images:
        for i, repeats in enumerate(reg_repeats):
            if first_pass:
                effective[i] = repeats
                used += repeats
            else:
                effective[i] += 1
                used += 1
            if used >= num_train_images:
                break
        first_pass = False
    return effective


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def make_plan(profile: Profile, scan: DatasetScan, num_processes: int = 1) -> TrainingPlan:
    """Work out everything about the run that does not need a GPU."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, not {num_processes}")
    groups, warnings = _dataset_groups(profile, scan)
    if sum(s.repeats * len(s.images) for s in scan.train) == 0:
        where = (f"in any train subset of dataset_config {scan.config.path}" if scan.config
                 else f"under {scan.train_dir}")
        raise DatasetError(f"no usable training images {where}",
                           "put .png/.jpg/.jpeg/.webp/.bmp images into the "
                           + ("image_dir folders of the train subsets" if scan.config else
                              "<repeats>_<name> folders")
                           + " (run `lora-train check` for details)")

    subsets: list[SubsetPlan] = []
    items: list[PlanItem] = []
    datasets: list[DatasetPlan] = []
    zero_bucket: list[ImageRecord] = []
    seed = validation_seed(profile)
    for index, (config, batch_size, members, split, split_seed) in enumerate(groups):
        dataset = _plan_dataset(index, config, batch_size, members,
                                profile.dataset.prior_loss_weight, subsets, items, zero_bucket,
                                Validation(split, seed if split_seed is None else split_seed))
        datasets.append(dataset)
    num_train_images = sum(d.num_train_images for d in datasets)
    if zero_bucket:
        names = ", ".join(str(r.path) for r in zero_bucket[:5])
        steps = sorted({d.bucket.bucket_reso_steps for d in datasets
                        if d.bucket.mode == "no_upscale"})
        raise DatasetError(
            f"{len(zero_bucket)} image(s) have a side smaller than bucket_reso_steps "
            f"({', '.join(map(str, steps))} px), which gives an empty bucket with "
            f"bucket_no_upscale: {names}",
            "remove or enlarge those images, or set bucket_no_upscale = false")

    bucket_items: dict[Size, list[int]] = {}
    for dataset in datasets:
        for reso, members in dataset.bucket_items.items():
            bucket_items.setdefault(reso, []).extend(members)
    bucket_items = dict(sorted(bucket_items.items()))
    bucket_counts = {reso: sum(items[i].repeats for i in members)
                     for reso, members in bucket_items.items()}
    mean_ar_error = _mean_ar_error([it for it in items if not it.is_validation])

    training = profile.training
    grad_accum = training.gradient_accumulation_steps
    # Batches never mix buckets (nor datasets), so each bucket's last batch may be short.
    batches_per_epoch = sum(d.batches_per_epoch for d in datasets)
    # ceil(batches / processes / accumulation), computed in integers.
    steps_per_epoch = _ceil_div(batches_per_epoch, num_processes * grad_accum)
    if training.max_train_epochs is not None:
        num_epochs = training.max_train_epochs
        max_train_steps = num_epochs * steps_per_epoch
        if training.max_train_steps is not None:
            warnings.append(f"both max_train_epochs ({num_epochs}) and max_train_steps "
                            f"({training.max_train_steps}) are set: max_train_epochs wins, "
                            f"so {max_train_steps} steps")
    elif training.max_train_steps is not None:
        max_train_steps = training.max_train_steps
        num_epochs = _ceil_div(max_train_steps, steps_per_epoch)
    else:
        num_epochs = 1
        max_train_steps = steps_per_epoch

    warmup = profile.optimizer.lr_warmup_steps
    # Below 1 it is a ratio of all steps (sd-scripts §8.2), else a number of steps.
    warmup_steps = int(warmup * max_train_steps) if 0 < warmup < 1 else int(warmup)
    if warmup_steps >= max_train_steps > 0:
        warnings.append(f"the warm-up ({warmup_steps} steps) lasts the whole run "
                        f"({max_train_steps} steps): the learning rate never reaches its value")

    saving = profile.saving
    every_epochs, every_steps = saving.save_every_n_epochs, saving.save_every_n_steps
    if saving.save_n_epoch_ratio:
        # sd-scripts' train_network: about N numbered files over the run, at least every
        # epoch; it replaces save_every_n_epochs (checks.rules warns when both are set).
        every_epochs = num_epochs // saving.save_n_epoch_ratio or 1
    # The last epoch writes the final file instead of a numbered one; step files are
    # written at every multiple of N, the last step included (as sd-scripts does).
    epoch_points = list(range(every_epochs, num_epochs, every_epochs)) if every_epochs else []
    step_points = list(range(every_steps, max_train_steps + 1, every_steps)) if every_steps \
        else []

    return TrainingPlan(
        subsets=subsets, items=items, num_train_images=num_train_images,
        num_reg_images=sum(d.num_reg_images for d in datasets),
        num_reg_samples=sum(d.num_reg_samples for d in datasets), bucket=datasets[0].bucket,
        bucket_counts=bucket_counts, bucket_items=bucket_items, mean_ar_error=mean_ar_error,
        batch_size=max(d.batch_size for d in datasets), gradient_accumulation_steps=grad_accum,
        num_processes=num_processes, batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
        max_train_steps=max_train_steps, warmup_steps=warmup_steps,
        save_every_n_epochs=every_epochs, save_every_n_steps=every_steps,
        epoch_save_points=epoch_points, step_save_points=step_points,
        output_name=saving.output_name,
        warnings=warnings, datasets=datasets,
        dataset_config=scan.config.path if scan.config else None,
        validation_batches=[b for d in datasets for b in d.validation_batches],
        validation_seed=seed,
        masked=profile.training.masked_loss
        or any(s.scan.options.alpha_mask for s in subsets))


def validation_seed(profile: Profile) -> int:
    """The seed that picks held-out images and draws validation noise: validation_seed, else
    the seed, else 0 (a fixed value, so `check`, the run and a resume agree)."""
    tr = profile.training
    return next((s for s in (tr.validation_seed, tr.seed) if s is not None), 0)


@dataclass(frozen=True)
class Validation:
    split: float  # share of each train subset's images held out
    seed: int


VALIDATION_TIMESTEP_COUNT = 4


def validation_timesteps(min_timestep: int, max_timestep: int,
                         count: int = VALIDATION_TIMESTEP_COUNT) -> list[int]:
    """``count`` timesteps evenly spaced strictly inside [min, max]: 200/400/600/800 for
    the whole range (``linspace(min, max, count + 2)[1:-1]``, as sd-scripts)."""
    span = max_timestep - min_timestep
    return [int(min_timestep + span * (i + 1) / (count + 1)) for i in range(count)]


def split_held_out(count: int, split: float, seed: int) -> set[int]:
    """Which of a subset's ``count`` images (indices in scan order) are held out.

    As sd-scripts' split: the images are shuffled with ``random.Random(seed)`` and the
    training part is the first ``count - held`` of that order; here ``held`` is
    count x split rounded down (computed so 10 x 0.3 is 3, not 2.9999...), so an image is
    either trained on or validated on, never both, and a subset always keeps one image.
    """
    if split <= 0 or count == 0:
        return set()
    held = min(count - 1, math.floor(round(count * split, 9)))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[count - held:])


Group = tuple[BucketConfig, int, list[SubsetScan], float, "int | None"]


def _dataset_groups(profile: Profile, scan: DatasetScan) -> tuple[list[Group], list[str]]:
    """(bucket config, batch size, subsets in registration order, validation split, its
    seed or None for the profile's) per dataset, and the bucket warnings. Folder mode: one
    dataset from the profile, train then reg folders."""
    split = profile.training.validation_split
    if scan.config is None:
        config, warnings = bucket_config(profile.dataset)
        return [(config, profile.training.train_batch_size, scan.subsets, split, None)], \
            warnings
    groups: list[Group] = []
    warnings: list[str] = []
    for spec in scan.config.datasets:
        members = [s for s in scan.subsets if s.dataset_index == spec.index]
        members.sort(key=lambda s: s.spec.subset_index if s.spec else 0)
        groups.append((spec.bucket, spec.batch_size, members,
                       split if spec.validation_split is None else spec.validation_split,
                       spec.validation_seed))
        warnings.extend(spec.bucket_warnings)
    return groups, warnings


def _plan_dataset(index: int, config: BucketConfig, batch_size: int,
                  members: list[SubsetScan], prior_loss_weight: float,
                  subsets: list[SubsetPlan], items: list[PlanItem],
                  zero_bucket: list[ImageRecord],
                  validation: Validation = Validation(0.0, 0)) -> DatasetPlan:
    """Balance, bucket and batch one dataset; appends to ``subsets`` / ``items``.

    With a validation split, each train subset's held-out images become validation items
    (repeats 1, never in a bucket's training list); regularization subsets are never split,
    and they are balanced against the images that do train (as sd-scripts does).
    """
    train = [s for s in members if not s.is_reg]
    reg = [s for s in members if s.is_reg]
    held = {id(s): split_held_out(len(s.images), validation.split, validation.seed)
            for s in train}
    num_train_images = sum(s.repeats * (len(s.images) - len(held[id(s)])) for s in train)
    reg_effective = balance_reg_repeats(num_train_images,
                                        [s.repeats for s in reg for _ in s.images])
    predefined = config.predefined
    first_subset, first_item = len(subsets), len(items)
    reg_offset = 0
    for subset in members:
        if subset.is_reg:
            effective = reg_effective[reg_offset:reg_offset + len(subset.images)]
            reg_offset += len(subset.images)
        else:
            effective = [0 if i in held[id(subset)] else subset.repeats
                         for i in range(len(subset.images))]
        held_out = [] if subset.is_reg else [subset.images[i] for i in sorted(held[id(subset)])]
        subsets.append(SubsetPlan(subset, effective, held_out))
        weight = prior_loss_weight if subset.is_reg else 1.0
        for position, (record, repeats) in enumerate(zip(subset.images, effective,
                                                         strict=True)):
            validating = not subset.is_reg and position in held[id(subset)]
            if repeats == 0 and not validating:
                continue
            bucket, resized = config.assign((record.width, record.height), predefined)
            if 0 in bucket:
                zero_bucket.append(record)
                continue
            items.append(PlanItem(record, len(subsets) - 1, subset.is_reg,
                                  1 if validating else repeats, weight, bucket, resized, index,
                                  is_validation=validating))
    bucket_items: dict[Size, list[int]] = {}
    validation_items: dict[Size, list[int]] = {}
    for item_index in range(first_item, len(items)):
        into = validation_items if items[item_index].is_validation else bucket_items
        into.setdefault(items[item_index].bucket_reso, []).append(item_index)
    trained = [it for it in items[first_item:] if not it.is_validation]
    bucket_items = dict(sorted(bucket_items.items()))
    bucket_counts = {reso: sum(items[i].repeats for i in indices)
                     for reso, indices in bucket_items.items()}
    return DatasetPlan(
        index=index, subset_indices=list(range(first_subset, len(subsets))), bucket=config,
        batch_size=batch_size, bucket_counts=bucket_counts, bucket_items=bucket_items,
        mean_ar_error=_mean_ar_error(trained), num_train_images=num_train_images,
        num_reg_images=sum(s.repeats * len(s.images) for s in reg),
        num_reg_samples=sum(it.repeats for it in trained if it.is_reg),
        batches_per_epoch=sum(_ceil_div(count, batch_size) for count in bucket_counts.values()),
        validation_split=validation.split,
        validation_batches=[members[start:start + batch_size]
                            for _, members in sorted(validation_items.items())
                            for start in range(0, len(members), batch_size)])


def _mean_ar_error(items: list[PlanItem]) -> float:
    errors = [abs(aspect_ratio_error(it.bucket_reso, (it.record.width, it.record.height)))
              for it in items]
    return math.fsum(errors) / len(errors) if errors else 0.0


def epoch_batches(plan: TrainingPlan, seed: int, epoch: int) -> list[list[int]]:
    """The batches (lists of item indices) of one epoch, in training order.

    Dataset by dataset, each bucket's samples (repeats expanded) are shuffled and cut into
    batches of that dataset's batch size within that bucket; then the order of all batches
    of all datasets is shuffled together, all with ``random.Random(seed + epoch)``. That is
    sd-scripts' order: each dataset item is one batch from one bucket of one dataset, the
    datasets are concatenated (``DatasetGroup``, a ``ConcatDataset``) and the DataLoader
    shuffles that concatenation, so datasets interleave. The same (seed, epoch) always gives
    the same batches, so a resumed run can skip exactly the batches it has already trained on.
    """
    rng = random.Random(seed + epoch)
    batches: list[list[int]] = []
    for dataset in plan.datasets:
        size = dataset.batch_size
        for members in dataset.bucket_items.values():
            samples = [index for index in members for _ in range(plan.items[index].repeats)]
            rng.shuffle(samples)
            for start in range(0, len(samples), size):
                batches.append(samples[start:start + size])
    rng.shuffle(batches)
    return batches


def _capped(values: list[Any]) -> list[Any]:
    return values[:_SUMMARY_LIST_LIMIT]


def plan_summary(plan: TrainingPlan) -> dict[str, Any]:
    """A JSON-ready description of the plan (for the run_started event and run records)."""
    folders = []
    for subset in plan.subsets:
        scan = subset.scan
        used = [r for r in subset.effective_repeats if r > 0]
        folders.append({
            "name": scan.name, "path": str(scan.folder), "is_reg": scan.is_reg,
            "dataset": scan.dataset_index,
            "images": len(scan.images), "repeats": scan.repeats,
            "effective_repeats": [min(used), max(used)] if used else [0, 0],
            "images_used": subset.images_used, "samples_per_epoch": subset.samples_per_epoch,
            "held_out": len(subset.held_out),
            "captions_found": scan.captions_found,
            "captions_missing": len(scan.missing_captions),
            "captions_other_extension": len(scan.other_extension_captions),
            "undecodable": len(scan.undecodable), "too_small": len(scan.too_small),
        })
    schedule = plan.checkpoint_schedule()
    return {
        "folders": folders,
        "bucket_mode": plan.bucket.mode,
        "resolution": list(plan.bucket.resolution),
        "buckets": [{"resolution": list(reso), "count": count}
                    for reso, count in plan.bucket_counts.items()],
        "mean_ar_error": plan.mean_ar_error,
        "num_train_images": plan.num_train_images,
        "num_reg_images": plan.num_reg_images,
        "num_reg_samples": plan.num_reg_samples,
        "unused_reg_images": plan.unused_reg_images,
        "batch_size": plan.batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "num_processes": plan.num_processes,
        "batches_per_epoch": plan.batches_per_epoch,
        "steps_per_epoch": plan.steps_per_epoch,
        "num_epochs": plan.num_epochs,
        "max_train_steps": plan.max_train_steps,
        "warmup_steps": plan.warmup_steps,
        "checkpoints": {
            "save_every_n_epochs": plan.save_every_n_epochs,
            "save_every_n_steps": plan.save_every_n_steps,
            "epochs": _capped(plan.epoch_save_points),
            "steps": _capped(plan.step_save_points),
            "files": _capped([name for _, name in schedule]),
            "num_files": len(schedule),
            "final": plan.final_file_name,
        },
        "warnings": list(plan.warnings),
        "validation": {
            "images": plan.num_validation_images,
            "batches": len(plan.validation_batches),
            "seed": plan.validation_seed,
            "splits": [d.validation_split for d in plan.datasets],
            "held_out": _capped([str(r.path) for r in plan.held_out]),
        },
        "dataset_config": str(plan.dataset_config) if plan.dataset_config else None,
        "datasets": [{
            "bucket_mode": d.bucket.mode, "resolution": list(d.bucket.resolution),
            "batch_size": d.batch_size, "batches_per_epoch": d.batches_per_epoch,
            "num_train_images": d.num_train_images, "num_reg_images": d.num_reg_images,
            "num_reg_samples": d.num_reg_samples,
            "buckets": [{"resolution": list(reso), "count": count}
                        for reso, count in d.bucket_counts.items()],
        } for d in plan.datasets],
    }
