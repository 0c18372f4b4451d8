"""Reading a profile: TOML data in, a :class:`~lora_core.profile.Profile` in its resolved
form out, with every problem found on the way.

:func:`read_profile` builds the profile field by field (``checks.fields``: unknown keys, types,
ranges, choices), reads sd-scripts' packed ``network_args`` into the fields they name, makes
every path absolute (relative paths are taken from the profile file's folder, once, here) and
runs the rules that involve several fields (``checks.rules``). It never raises for bad values:
it returns the problems. :func:`profile_from_dict` raises one ProfileError listing them, for
callers that need a valid profile or nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

from lora_core.checks import rules
from lora_core.checks.fields import (
    FIELDS_HINT,
    canonical_choice,
    harmless_key,
    read_section,
    unknown_key,
    value_problem,
)
from lora_core.checks.problem import Problem, error, raise_for_errors
from lora_core.errors import ProfileError, closest
from lora_core.models.files import SINGLE_FILE_SUFFIXES
from lora_core.paths import foreign_path
from lora_core.profile import (
    BUILTIN_PREFIX,
    HARMLESS_KEYS,
    NOT_YET_SECTIONS,
    PATH_LIST_FIELDS,
    PROFILE_VERSION,
    SECTIONS,
    Profile,
)
from lora_core.profile_flux import LORA_FLUX_ARGS
from lora_core.profile_io import apply_overrides, read_profile_dict
from lora_core.values import coerce, describe_type, format_value, type_parts

# sd-scripts' network_args (and LyCORIS's) that are fields here: key -> section.
NETWORK_ARG_FIELDS = {
    "conv_dim": "network", "conv_alpha": "network", "rank_dropout": "network",
    "module_dropout": "network", "factor": "network", "block_dims": "network",
    "block_alphas": "network", "conv_block_dims": "network", "conv_block_alphas": "network",
    "dropout": "network", "loraplus_lr_ratio": "optimizer",
    "loraplus_unet_lr_ratio": "optimizer", "loraplus_text_encoder_lr_ratio": "optimizer",
    "down_lr_weight": "optimizer", "mid_lr_weight": "optimizer", "up_lr_weight": "optimizer",
    "block_lr_zero_threshold": "optimizer", "dora_wd": "network", "unit": "network",
    "block_size": "network", "constraint": "network", "rescaled": "network",
    "train_on_input": "network",
    # networks.lora_flux's (Flux.1 / Chroma): fields of [flux], which the check refuses for
    # an SD model.
    **dict.fromkeys(LORA_FLUX_ARGS, "flux"),
}
# network_args names that differ from the field they set.
NETWORK_ARG_ALIASES = {"dropout": "network_dropout", "unit": "dylora_unit",
                       "block_size": "dylora_unit"}
LYCORIS_ALGOS = {"lora": "LoCon", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr",
                 "dylora": "DyLoRA", "full": "Full", "ia3": "IA3", "diag-oft": "DiagOFT",
                 "boft": "BOFT", "glora": "GLoRA"}
# "owner/name" as on the Hugging Face Hub (kept as written when no such local path exists).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def profile_from_dict(data: dict, base_dir: Path | None = None,
                      source: str = "profile") -> Profile:
    """A valid profile from parsed TOML, or one ProfileError listing every problem."""
    profile, problems = read_profile(data, base_dir)
    raise_for_errors(problems, f"{source} has", FIELDS_HINT, ProfileError)
    return profile


def read_profile(data: dict, base_dir: Path | None = None) -> tuple[Profile, list[Problem]]:
    """The profile ``data`` describes (a value that does not fit keeps its default) and
    every problem with it: errors, and notes such as an sd-scripts flag with no effect."""
    problems: list[Problem] = []
    version = data.get("profile_version", PROFILE_VERSION)
    if version != PROFILE_VERSION:
        problems.append(error(f"`profile_version` = {format_value(version)} is not supported: "
                              f"this version of lora-train reads version {PROFILE_VERSION}",
                              key="profile_version"))
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "profile_version":
            continue
        if key in SECTIONS:
            sections[key] = read_section(key, SECTIONS[key], value, problems)
        elif key in NOT_YET_SECTIONS:
            problems.append(error(f"`[{key}]` is not supported yet by this version of "
                                  "lora-train; remove that section from the profile"))
        elif isinstance(value, dict):  # a [table]: say "section", and which ones exist
            guess = closest(key, list(SECTIONS))
            problems.append(error(f"`[{key}]`: unknown section; "
                                  + (f"did you mean `[{guess}]`?" if guess
                                     else f"the sections are {', '.join(SECTIONS)}")))
        elif key in HARMLESS_KEYS:
            problems.append(harmless_key(None, key))
        else:
            problems.append(unknown_key(None, key, ["profile_version", *SECTIONS]))
    profile = Profile(**sections, base_dir=Path(base_dir) if base_dir else Path.cwd())
    problems += apply_network_args(profile, data)
    problems += foreign_path_problems(profile)
    resolve_paths(profile)
    problems += rules.profile_rules(profile)
    return profile, problems


def resolve_path_text(text: str, base_dir: Path) -> str:
    """A path as written, made absolute (``~`` expanded, relative to ``base_dir``)."""
    path = Path(text).expanduser()
    return os.path.normpath(path if path.is_absolute() else Path(base_dir) / path)


def _path_values(profile: Profile):
    """(section, key, value) of every non-empty path written in the profile (path lists
    one entry at a time)."""
    for section_name, cls in SECTIONS.items():
        section = getattr(profile, section_name)
        for f in dataclasses.fields(cls):
            value = getattr(section, f.name)
            if f.metadata["path"] and value:
                yield section_name, f.name, value
    for section_name, key in PATH_LIST_FIELDS:
        for value in getattr(getattr(profile, section_name), key):
            if value:
                yield section_name, key, value


def foreign_path_problems(profile: Profile) -> list[Problem]:
    """Every path field holding another machine's path (``C:\\...``, ``\\\\server\\...`` on
    Linux or macOS, as an import of a Windows command brings): all named at once, none joined
    to the profile's folder (``resolve_paths`` leaves them as written)."""
    found = []
    for section_name, key, value in _path_values(profile):
        kind = foreign_path(value)
        if kind:
            found.append(error(
                f"`[{section_name}] {key}` = {format_value(value)} is {kind}, from another "
                "machine; it means nothing here",
                "give the path of that file or folder on this machine (an imported command "
                "keeps the paths of the machine it was written on)",
                section=section_name, key=key))
    return found


def resolve_paths(profile: Profile) -> None:
    """Make every path field absolute, once. Left as written: empty fields, built-in models,
    another machine's paths (``foreign_path_problems`` names them) and a base model named by
    Hub id (``owner/name``) with no such local path, which the model check explains."""
    for section_name, cls in SECTIONS.items():
        section = getattr(profile, section_name)
        for f in dataclasses.fields(cls):
            value = getattr(section, f.name)
            if not f.metadata["path"] or not value or value.startswith(BUILTIN_PREFIX) \
                    or foreign_path(value):
                continue
            resolved = resolve_path_text(value, profile.base_dir)
            if (section_name, f.name) == ("model", "pretrained_model_name_or_path") \
                    and _HUB_ID.match(value) and not os.path.exists(resolved) \
                    and not value.lower().endswith(SINGLE_FILE_SUFFIXES):
                continue
            setattr(section, f.name, resolved)
    for section_name, key in PATH_LIST_FIELDS:
        section = getattr(profile, section_name)
        setattr(section, key, [resolve_path_text(v, profile.base_dir)
                               if v and not foreign_path(v) else v
                               for v in getattr(section, key)])


def _parse_arg_value(raw: str, hint: Any) -> Any:
    """A network_args value as the field's type: strings stay as written."""
    import ast

    if str in type_parts(hint)[0]:
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_network_args(profile: Profile, data: dict) -> list[Problem]:
    """Read sd-scripts' ``network_args`` into the fields they name (``data``: the profile's
    TOML, for the fields also set in their own sections), then normalise ``network_module``
    ("networks.lora" / "lycoris.kohya") to one of NETWORK_TYPES."""
    problems: list[Problem] = []
    net = profile.network
    algo = None
    spot = {"section": "network", "key": "network_args"}
    for item in net.network_args:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        where = f"`[network] network_args` item {item!r}"
        if not sep or not key or not raw:
            problems.append(error(f"{where} is not of the form name=value (like "
                                  "\"conv_dim=4\")", **spot))
            continue
        if key == "algo":
            algo = LYCORIS_ALGOS.get(raw.lower())
            if algo is None:
                problems.append(error(f"{where}: algo {raw!r} is not supported; the choices "
                                      f"are {', '.join(LYCORIS_ALGOS)}", **spot))
            continue
        if key not in NETWORK_ARG_FIELDS:
            guess = closest(key, list(NETWORK_ARG_FIELDS) + ["algo"])
            problems.append(error(f"{where}: {key!r} is not supported"
                                  + (f"; did you mean {guess!r}?" if guess else ""), **spot))
            continue
        section_name = NETWORK_ARG_FIELDS[key]
        field_name = NETWORK_ARG_ALIASES.get(key, key)
        cls = SECTIONS[section_name]
        hint = typing.get_type_hints(cls)[field_name]
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[field_name]
        ok, value = coerce(_parse_arg_value(raw, hint), hint)
        if not ok:
            problems.append(error(f"{where}: {raw!r} must be {describe_type(hint)}", **spot))
            continue
        problem = value_problem(where, value, meta)
        if problem:
            problems.append(error(problem, **spot))
            continue
        value = canonical_choice(value, meta)
        section = getattr(profile, section_name)
        current = getattr(section, field_name)
        explicit = data.get(section_name)
        if isinstance(explicit, dict) and field_name in explicit and current != value:
            problems.append(error(f"{where} conflicts with `[{section_name}] {field_name}` = "
                                  f"{format_value(current)}; set it in one place", **spot))
            continue
        setattr(section, field_name, value)
    net.network_args = []
    if net.network_module == "networks.lora":
        net.network_module = "LoCon" if net.conv_dim is not None else "LoRA"
    elif net.network_module == "networks.dylora":
        net.network_module = "DyLoRA"
    elif net.network_module == "lycoris.kohya":
        net.network_module = algo or "LoCon"  # LyCORIS's default algo is "lora" (LoCon)
    elif algo is not None and algo != net.network_module:
        problems.append(error(f"`[network] network_args` algo={algo} conflicts with "
                              f"network_module = {format_value(net.network_module)}; set the "
                              "type in network_module only", **spot))
    return problems


def load_profile(path: Path, overrides: list[str] | None = None) -> Profile:
    """The profile in ``path`` (with ``--set`` overrides); ProfileError listing every
    problem when it is not valid."""
    path = Path(path)
    data = read_profile_dict(path)
    apply_overrides(data, overrides or [])
    return profile_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def read_profile_file(path: Path, overrides: list[str] | None = None
                      ) -> tuple[Profile, list[Problem]]:
    """The profile in ``path`` and every problem reading it found (``profile_load``), for
    ``lora-train check``. A file that cannot be read at all still raises ProfileError."""
    path = Path(path)
    data = read_profile_dict(path)
    apply_overrides(data, overrides or [])
    return read_profile(data, base_dir=path.resolve().parent)
