"""sd-scripts' ``dataset_config`` files: several datasets, each with its own subsets.

``[dataset] dataset_config`` names a ``.toml`` or ``.json`` file in sd-scripts' format
(kohya-compat.md §2, sd-scripts' ``library/config_util.py``): an optional ``[general]``
table, a list ``[[datasets]]`` and, in each, a list ``[[datasets.subsets]]`` (one per image
folder). Every value is looked up subset → dataset → general → the profile's [dataset] field
(``batch_size``: [training] train_batch_size) → built-in default, and the first one set wins:
sd-scripts' ``BlueprintGenerator.search_value``, with the profile where sd-scripts has its
command line. Folder names mean nothing in this mode (§1.1): ``num_repeats``,
``class_tokens`` and ``is_reg`` are given per subset.

sd-scripts validates with voluptuous, whose ``extra keys not allowed @ data['datasets'][0]``
is one of its most asked-about errors (kohya-ss/sd-scripts#1311, #681). Here every problem
names its place (``datasets[0].subsets[1].num_repeat``) and says what to do: the closest
valid key, the level a key belongs to, or that sd-scripts has the key and lora-train does not
support it yet. Keys sd-scripts accepts at a value that changes nothing
(``network_multiplier = 1.0``, ``alpha_mask = false``, ...) are accepted, so configs written
by GUIs that spell out every key still load.

This module reads the file and resolves its values; it never looks inside the image folders
(``scan.scan_config`` does), and the ``ss_*`` keys of this mode are written by
``saving.metadata``. Values are judged by ``values.coerce``, as the profile's are. Pure
Python.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lora_core.dataset.buckets import BucketConfig, Size, resolve_bucket_config
from lora_core.dataset.subset_options import (
    SUBSET_OPTION_NAMES,
    SubsetOptions,
    uncacheable_latents,
)
from lora_core.errors import ProfileError, closest
from lora_core.paths import foreign_path
from lora_core.profile import SECTIONS, DatasetSection, TrainingSection
from lora_core.values import Resolution, coerce, describe_type

Level = Literal["general", "dataset", "subset"]

# sd-scripts' schema (ConfigSanitizer, DreamBooth + fine-tuning + ControlNet), by level.
# Dataset-level keys: in [general] and [[datasets]], never in a subset.
DATASET_LEVEL_KEYS = frozenset({
    "resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_reso_steps", "bucket_no_upscale", "network_multiplier", "validation_seed",
    "validation_split"})
# "Ascendable" subset keys: in a subset, its dataset or [general].
SUBSET_KEYS = frozenset({
    "num_repeats", "shuffle_caption", "caption_separator", "keep_tokens",
    "keep_tokens_separator", "secondary_separator", "enable_wildcard", "color_aug", "flip_aug",
    "face_crop_aug_range", "random_crop", "caption_prefix", "caption_suffix",
    "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "token_warmup_min", "token_warmup_step", "custom_attributes", "resize_interpolation",
    "class_tokens", "caption_extension", "cache_info"})
# Keys that describe one folder: subsets only.
SUBSET_ONLY_KEYS = frozenset({"image_dir", "is_reg", "alpha_mask", "metadata_file",
                              "conditioning_data_dir"})
SD_SCRIPTS_KEYS = DATASET_LEVEL_KEYS | SUBSET_KEYS | SUBSET_ONLY_KEYS

DATASET_FIELDS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso",
                  "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")
# The SubsetOptions a config can set; a field added to SubsetOptions under one of
# sd-scripts' key names is supported here without another change.
CONFIG_OPTION_NAMES = tuple(n for n in SUBSET_OPTION_NAMES if n in SD_SCRIPTS_KEYS)
# Dataset-level keys that override a profile field of the same name for one dataset.
VALIDATION_FIELDS = ("validation_split", "validation_seed")
SUPPORTED_KEYS = frozenset({*DATASET_FIELDS, *VALIDATION_FIELDS, *CONFIG_OPTION_NAMES,
                            "num_repeats", "class_tokens", "image_dir", "is_reg",
                            "conditioning_data_dir"})
# Unsupported keys at the value that changes nothing are accepted (and have no effect).
_NEUTRAL: dict[str, Any] = {"network_multiplier": 1.0, "custom_attributes": {},
                            "cache_info": False}
_NOT_YET_WHY = {
    "metadata_file": "fine-tuning subsets (metadata_file, sd-scripts' --in_json format) are "
                     "not supported yet by this version of lora-train; use image_dir with "
                     "caption files next to the images",
    "cache_info": "cache_info = true is not supported yet (lora-train reads image sizes from "
                  "the file headers and never writes metadata_cache.json into a dataset "
                  "folder); remove it or set it to false",
}

_OPTION_TYPES = typing.get_type_hints(SubsetOptions)
_TYPES: dict[str, Any] = {
    # sd-scripts takes a number or a [width, height] pair (no "W,H" string, unlike a profile)
    "resolution": int | tuple[int, int], "num_repeats": int, "class_tokens": str, "image_dir": str,
    "is_reg": bool,
    "batch_size": int, "enable_bucket": bool, "min_bucket_reso": int, "max_bucket_reso": int,
    "bucket_reso_steps": int, "bucket_no_upscale": bool, "network_multiplier": float,
    "validation_seed": int, "validation_split": float, "alpha_mask": bool, "cache_info": bool,
    "custom_attributes": dict, "face_crop_aug_range": tuple[float, float],
    "resize_interpolation": str, "metadata_file": str, "conditioning_data_dir": str,
    "shuffle_caption": bool, "caption_separator": str, "keep_tokens": int,
    "keep_tokens_separator": str, "secondary_separator": str, "enable_wildcard": bool,
    "color_aug": bool, "flip_aug": bool, "random_crop": bool, "caption_prefix": str,
    "caption_suffix": str, "caption_dropout_rate": float, "caption_dropout_every_n_epochs": int,
    "caption_tag_dropout_rate": float, "token_warmup_min": int, "token_warmup_step": float,
    "caption_extension": str,
    **{name: _OPTION_TYPES[name] for name in CONFIG_OPTION_NAMES},
}
# Allowed ranges: the profile field's, where the profile has one under the same name.
_RANGES: dict[str, dict] = {f.name: f.metadata for f in dataclasses.fields(DatasetSection)}
_RANGES.update({f.name: f.metadata for f in dataclasses.fields(TrainingSection)
                if f.name in VALIDATION_FIELDS})
_RANGES["batch_size"] = next(f.metadata for f in dataclasses.fields(TrainingSection)
                             if f.name == "train_batch_size")
_FORMAT_HINT = ("sd-scripts' dataset config: optional [general], then [[datasets]] tables "
                "(resolution, batch_size, buckets), each with [[datasets.subsets]] tables "
                "(image_dir, num_repeats, class_tokens, is_reg, caption options)")


@dataclass(frozen=True)
class SubsetSpec:
    """One ``[[datasets.subsets]]`` table with every value resolved."""

    where: str  # "datasets[0].subsets[1]", for messages
    dataset_index: int
    subset_index: int  # position in its dataset's list, as written
    image_dir: Path  # absolute (relative paths are relative to the config file's folder)
    num_repeats: int
    class_tokens: str  # "" when unset: images without a caption file train with ""
    is_reg: bool
    options: SubsetOptions
    # Mask images for masked_loss (sd-scripts' key; absolute), or None.
    conditioning_data_dir: Path | None = None
    # option/key -> the config key that set it ("general.shuffle_caption"); keys not in it
    # come from the profile (or the built-in default).
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """One ``[[datasets]]`` table: its buckets, batch size and subsets."""

    index: int
    resolution: Size
    batch_size: int
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    bucket: BucketConfig
    subsets: list[SubsetSpec]
    sources: dict[str, str] = field(default_factory=dict)
    bucket_warnings: list[str] = field(default_factory=list)
    # None: the profile's [training] value.
    validation_split: float | None = None
    validation_seed: int | None = None

    @property
    def where(self) -> str:
        return f"datasets[{self.index}]"


@dataclass
class DatasetConfig:
    """A validated dataset config file."""

    path: Path
    datasets: list[DatasetSpec]
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # subsets not used, and why


# ----------------------------------------------------------------------------------------
# Reading


def load_dataset_config(path: Path, ds: DatasetSection, train_batch_size: int,
                        ) -> DatasetConfig:
    """Read and validate ``path`` (.toml or .json). Raises ProfileError naming the file and
    every wrong key."""
    path = Path(path)
    hint = "set `[dataset] dataset_config` to an sd-scripts dataset config (.toml or .json)"
    if not path.is_file():
        raise ProfileError(f"`[dataset] dataset_config` file not found: {path}", hint)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ProfileError(f"`[dataset] dataset_config` {path} must be a .toml or .json file "
                           "(sd-scripts picks the parser by the extension)", hint)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"dataset_config {path} cannot be read: {exc}",
                           "save it as UTF-8 text") from exc
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"dataset_config {path} is not valid {suffix[1:].upper()}: {exc}",
                           "fix the syntax at the line named above") from exc
    except RecursionError:
        raise ProfileError(f"dataset_config {path} is nested too deeply to be a dataset "
                           "config", hint) from None
    return dataset_config_from_dict(data, path, ds, train_batch_size)


def dataset_config_from_dict(data: Any, path: Path, ds: DatasetSection,
                             train_batch_size: int) -> DatasetConfig:
    """Validate parsed config data and resolve every value (see module docstring)."""
    path = Path(path)
    errors: list[str] = []
    config = DatasetConfig(path=path, datasets=[])
    if not isinstance(data, dict):
        raise ProfileError(f"dataset_config {path} must be a table of [general] and "
                           "[[datasets]], not a list or a value", _FORMAT_HINT)
    for key in data:
        if key not in ("general", "datasets"):
            errors.append(_top_level_problem(key))
    general = _table(data.get("general", {}), "general", "general", errors)
    raw_datasets = data.get("datasets")
    if raw_datasets is None:
        errors.append("`datasets`: the file has no [[datasets]] table; add one with at least "
                      "one [[datasets.subsets]] that names an image_dir")
        raw_datasets = []
    elif not isinstance(raw_datasets, list):
        errors.append("`datasets` must be a list of tables: write each as [[datasets]]")
        raw_datasets = []
    for index, raw in enumerate(raw_datasets):
        spec = _dataset(raw, index, general, path.parent, ds, train_batch_size, errors, config)
        if spec is not None:
            config.datasets.append(spec)
    if errors:
        raise ProfileError(
            f"dataset_config {path} has {len(errors)} problem{'s' if len(errors) > 1 else ''}"
            ":\n  - " + "\n  - ".join(errors),
            "fix the keys named above (the path says where: datasets[0].subsets[1] is the "
            "second [[datasets.subsets]] of the first [[datasets]]); " + _FORMAT_HINT)
    return config


def _top_level_problem(key: str) -> str:
    if key in DATASET_LEVEL_KEYS | SUBSET_KEYS:
        return (f"`{key}`: keys at the top of the file are not read; put it under [general] "
                "(all datasets) or in a [[datasets]] table")
    if key == "subsets":
        return "`subsets`: write subsets as [[datasets.subsets]] after a [[datasets]] line"
    if key in SUBSET_ONLY_KEYS:
        return f"`{key}` belongs in [[datasets.subsets]] (one table per image folder)"
    guess = closest(key, ["general", "datasets"])
    tail = f"; did you mean `{guess}`?" if guess else ": the file holds [general] and [[datasets]]"
    return f"`{key}`: unknown top-level key{tail}"


def _allowed(level: Level) -> frozenset[str]:
    if level == "subset":
        return SUBSET_KEYS | SUBSET_ONLY_KEYS
    return DATASET_LEVEL_KEYS | SUBSET_KEYS


def _placement_problem(key: str, at: str, level: Level) -> str | None:
    """Why ``key`` may not appear at this level, or None if it may."""
    if key in _allowed(level) or (level == "dataset" and key == "subsets"):
        return None
    if key in SUBSET_ONLY_KEYS:
        return (f"`{at}`: `{key}` belongs in [[datasets.subsets]]: it describes one image "
                "folder, so each subset sets its own")
    if key in DATASET_LEVEL_KEYS:
        return (f"`{at}`: `{key}` belongs in [[datasets]] or [general], not in a subset: all "
                f"subsets of a dataset share one {key} (put subsets that need another value "
                "in a [[datasets]] of their own)")
    if key == "subsets":
        return (f"`{at}`: subsets belong to a dataset: write them as [[datasets.subsets]] "
                "after a [[datasets]] line")
    if key in ("general", "datasets"):
        return f"`{at}`: [{key}] belongs at the top of the file"
    guess = closest(key, sorted(_allowed(level)))
    if guess:
        return f"`{at}`: unknown key; did you mean `{guess}`?"
    guess = closest(key, sorted(SD_SCRIPTS_KEYS))
    if guess:
        other = "[[datasets.subsets]]" if guess in SUBSET_ONLY_KEYS else "[[datasets]] or [general]"
        return f"`{at}`: unknown key; did you mean `{guess}` (which belongs in {other})?"
    owner = next((name for name, cls in SECTIONS.items()
                  if key in {f.name for f in dataclasses.fields(cls)}), None)
    if owner:
        return (f"`{at}`: `{key}` is a training option, not a dataset config key: set "
                f"`[{owner}] {key}` in the profile")
    return (f"`{at}`: unknown key; the keys allowed here are: "
            + ", ".join(sorted(_allowed(level))))


def _describe(key: str) -> str:
    if key == "resolution":
        return "one integer like 512, or [width, height] like [768, 512]"
    return describe_type(_TYPES[key])


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (str, list, dict)) else str(value)


def _range_problem(at: str, key: str, value: Any) -> str | None:
    meta = _RANGES.get(key)
    if meta is not None and meta.get("choices") and isinstance(value, str) \
            and value not in meta["choices"]:  # resize_interpolation
        return (f"`{at}` = {_fmt(value)} is not one of the choices: "
                + ", ".join(c for c in meta["choices"] if c))
    if isinstance(value, float) and not math.isfinite(value):  # TOML inf/nan, JSON Infinity
        return f"`{at}` = {_fmt(value)} is not a finite number: give an ordinary number"
    if meta is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high = meta.get("min"), meta.get("max")
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        allowed = f"between {_fmt(low)} and {_fmt(high)}"
    else:
        allowed = f"at least {_fmt(low)}" if low is not None else f"at most {_fmt(high)}"
    return f"`{at}` = {_fmt(value)} is out of range: it must be {allowed}"


def _table(raw: Any, where: str, level: Level, errors: list[str]) -> dict[str, Any]:
    """The checked values of one table (``subsets`` left out); problems go to ``errors``."""
    if not isinstance(raw, dict):
        kind = {"general": "[general]", "dataset": "[[datasets]]",
                "subset": "[[datasets.subsets]]"}[level]
        errors.append(f"`{where}` must be a table ({kind}), not {_fmt(raw)}")
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if level == "dataset" and key == "subsets":
            continue
        at = f"{where}.{key}"
        problem = _placement_problem(key, at, level)
        if problem:
            errors.append(problem)
            continue
        if value is None:
            continue  # JSON null: unset, as sd-scripts' search_value skips None
        ok, converted = coerce(value, _TYPES[key])
        if ok and key == "resolution":
            converted = Resolution.parse(converted)
            ok = converted is not None
        if not ok:
            errors.append(f"`{at}` = {_fmt(value)} has the wrong type: it must be "
                          f"{_describe(key)}")
            continue
        if key not in SUPPORTED_KEYS:
            if key in _NEUTRAL and converted == _NEUTRAL[key]:
                continue
            why = _NOT_YET_WHY.get(key, f"`{key}` is not supported yet by this version of "
                                        "lora-train; remove it")
            errors.append(f"`{at}` = {_fmt(value)}: {why}")
            continue
        problem = _range_problem(at, key, converted)
        if problem:
            errors.append(problem)
            continue
        values[key] = converted
    return values


def _lookup(key: str, tables: list[tuple[str, dict[str, Any]]]) -> tuple[bool, Any, str]:
    """(found, value, "where.key") from the first table that sets ``key``."""
    for where, values in tables:
        if key in values:
            return True, values[key], f"{where}.{key}"
    return False, None, ""


def _dataset(raw: Any, index: int, general: dict[str, Any], base: Path, ds: DatasetSection,
             train_batch_size: int, errors: list[str],
             config: DatasetConfig) -> DatasetSpec | None:
    where = f"datasets[{index}]"
    values = _table(raw, where, "dataset", errors)
    if not isinstance(raw, dict):
        return None
    levels = [(where, values), ("general", general)]
    sources: dict[str, str] = {}
    resolved: dict[str, Any] = {}
    for key in DATASET_FIELDS:
        found, value, source = _lookup(key, levels)
        if found:
            sources[key] = source
        elif key == "resolution":
            value = ds.resolution
        elif key == "batch_size":
            value = train_batch_size
        else:
            value = getattr(ds, key)
        resolved[key] = value
    validation: dict[str, Any] = {}
    for key in VALIDATION_FIELDS:
        found, value, source = _lookup(key, levels)
        if found:
            sources[key] = source
            validation[key] = value
    before = len(errors)
    errors.extend(_dataset_rules(where, resolved, sources))
    if validation.get("validation_split", 0) >= 1:
        errors.append(f"`{sources['validation_split']}` = {_fmt(validation['validation_split'])}"
                      " holds out every image and leaves none to train on: use a share below "
                      "1 (0.1 or 0.2 is usual), or 0 for no validation")

    raw_subsets = raw.get("subsets")
    if raw_subsets is None or raw_subsets == []:
        errors.append(f"`{where}` has no [[datasets.subsets]]; add one with image_dir = "
                      "\"<folder of images>\" (and num_repeats, class_tokens)")
        raw_subsets = []
    elif not isinstance(raw_subsets, list):
        errors.append(f"`{where}.subsets` must be a list of tables: write each as "
                      "[[datasets.subsets]]")
        raw_subsets = []
    subsets: list[SubsetSpec] = []
    seen: dict[str, str] = {}
    for j, raw_subset in enumerate(raw_subsets):
        subset = _subset(raw_subset, index, j, levels, base, ds, errors)
        if subset is None:
            continue
        key = os.path.normcase(str(subset.image_dir))
        if key in seen:
            # sd-scripts compares subsets by image_dir and keeps the first.
            reason = (f"{subset.where} repeats the image_dir of {seen[key]}; the later one "
                      "is ignored (as sd-scripts does)")
            config.skipped.append((subset.image_dir, reason))
            config.warnings.append(reason)
            continue
        if subset.num_repeats < 1:
            reason = (f"{subset.where}.num_repeats = {subset.num_repeats} is less than 1, so "
                      "this subset is not used (as sd-scripts does)")
            config.skipped.append((subset.image_dir, reason))
            config.warnings.append(reason)
            continue
        seen[key] = subset.where
        subsets.append(subset)
    if len(errors) > before:
        return None
    bucket, bucket_warnings = resolve_bucket_config(
        resolved["resolution"], enable_bucket=resolved["enable_bucket"],
        bucket_no_upscale=resolved["bucket_no_upscale"],
        min_bucket_reso=resolved["min_bucket_reso"], max_bucket_reso=resolved["max_bucket_reso"],
        bucket_reso_steps=resolved["bucket_reso_steps"])
    return DatasetSpec(index=index, bucket=bucket, subsets=subsets, sources=sources,
                       bucket_warnings=[f"{where}: {w}" for w in bucket_warnings], **resolved,
                       **validation)


def _from(sources: dict[str, str], key: str) -> str:
    """Where a resolved value came from, for messages."""
    if key in sources:
        return f"`{sources[key]}`"
    if key == "batch_size":
        return "the profile's [training] train_batch_size"
    return f"the profile's [dataset] {key}"


def _dataset_rules(where: str, values: dict[str, Any], sources: dict[str, str]) -> list[str]:
    """The profile's cross-field bucket rules (profile.cross_field_errors), per dataset."""
    found = []
    width, height = values["resolution"]
    reso = f"resolution {width}x{height} (from {_from(sources, 'resolution')})"
    if width % 8 or height % 8:
        found.append(f"`{where}`: {reso}: both sides must be multiples of 8")
    if values["enable_bucket"] and not values["bucket_no_upscale"]:
        low, high = values["min_bucket_reso"], values["max_bucket_reso"]
        if low > min(width, height):
            found.append(f"`{where}`: min_bucket_reso = {low} (from "
                         f"{_from(sources, 'min_bucket_reso')}) must not be larger than the "
                         f"smaller side of its {reso}")
        if high < max(width, height):
            found.append(f"`{where}`: max_bucket_reso = {high} (from "
                         f"{_from(sources, 'max_bucket_reso')}) must not be smaller than the "
                         f"larger side of its {reso}")
    steps = values["bucket_reso_steps"]
    if values["enable_bucket"] and steps % 64:
        found.append(f"`{where}`: bucket_reso_steps = {steps} (from "
                     f"{_from(sources, 'bucket_reso_steps')}) must be a multiple of 64 for "
                     "SD 1.x models")
    return found


def _subset(raw: Any, dataset_index: int, subset_index: int,
            levels: list[tuple[str, dict[str, Any]]], base: Path, ds: DatasetSection,
            errors: list[str]) -> SubsetSpec | None:
    where = f"datasets[{dataset_index}].subsets[{subset_index}]"
    values = _table(raw, where, "subset", errors)
    if not isinstance(raw, dict):
        return None
    if raw.get("image_dir") is None and "metadata_file" not in raw:
        errors.append(f"`{where}`: `image_dir` is required: the folder that holds this "
                      "subset's images")
        return None
    if "image_dir" not in values:
        return None  # its problem is already listed
    if not values["image_dir"].strip():
        errors.append(f"`{where}.image_dir` is empty: name the folder that holds this "
                      "subset's images")
        return None
    chain = [(where, values), *levels]
    sources: dict[str, str] = {}
    option_values: dict[str, Any] = {}
    for name in SUBSET_OPTION_NAMES:
        found, value, source = _lookup(name, chain) if name in CONFIG_OPTION_NAMES \
            else (False, None, "")
        if found:
            sources[name] = source
            option_values[name] = value
        else:
            option_values[name] = getattr(ds, name)
    extension = option_values.get("caption_extension", "")
    if extension and not extension.startswith("."):
        option_values["caption_extension"] = "." + extension  # sd-scripts adds the dot too
    options = SubsetOptions(**option_values)
    found_repeats, repeats, source = _lookup("num_repeats", chain)
    if found_repeats:
        sources["num_repeats"] = source
    found_tokens, class_tokens, source = _lookup("class_tokens", chain)
    if found_tokens:
        sources["class_tokens"] = source
    for key in ("image_dir", "conditioning_data_dir"):
        kind = foreign_path(str(values.get(key, "")))
        if kind:  # never joined to the config's folder: "<folder>/C:\\lora\\img"
            errors.append(f"`{where}.{key}` = {_fmt(values[key])} is {kind}, from another "
                          "machine; give the path of that folder on this machine")
    image_dir = Path(values["image_dir"]).expanduser()
    if not image_dir.is_absolute():
        image_dir = base / image_dir
    mask_dir = None
    if values.get("conditioning_data_dir", "").strip():
        mask_dir = Path(values["conditioning_data_dir"]).expanduser()
        mask_dir = Path(os.path.normpath(mask_dir if mask_dir.is_absolute()
                                         else base / mask_dir))
    errors.extend(_subset_rules(where, options, sources, ds))
    return SubsetSpec(where=where, dataset_index=dataset_index, subset_index=subset_index,
                      image_dir=Path(os.path.normpath(image_dir)),
                      conditioning_data_dir=mask_dir,
                      num_repeats=repeats if found_repeats else 1,
                      class_tokens=class_tokens if found_tokens else "",
                      is_reg=values.get("is_reg", False), options=options, sources=sources)


def _subset_rules(where: str, options: SubsetOptions, sources: dict[str, str],
                  ds: DatasetSection) -> list[str]:
    """The profile's per-option rules for values a config sets (profile._dataset_errors)."""
    found = []
    if ds.cache_latents or ds.cache_latents_to_disk:
        found += [uncacheable_latents(f"`{sources[key]}`", key, where)
                  for key in options.pixel_changes() if key in sources]
    step = options.token_warmup_step
    if "token_warmup_step" in sources and step >= 1 and step != int(step):
        found.append(f"`{sources['token_warmup_step']}` = {_fmt(step)}: use a whole number of "
                     "steps, or a ratio below 1")
    return found
