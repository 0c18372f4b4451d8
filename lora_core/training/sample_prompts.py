"""Preview-image prompt files, the sampling schedule and the sample file names.

sd-scripts' ``--sample_prompts`` file (kohya-compat.md §9) comes in three forms:

* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.
  Options follow the prompt after ``" --"`` (case-insensitive): ``--n`` negative prompt,
  ``--w``/``--h`` size, ``--d`` seed, ``--s`` steps, ``--l`` CFG scale, ``--ss`` sampler.
* ``.toml``: a ``[prompt]`` table of shared defaults and a ``[[prompt.subset]]`` array; each
  subset is merged over the defaults. Keys: ``prompt, negative_prompt, width, height, seed,
  sample_steps, scale, sample_sampler``.
* ``.json``: a list whose items are dicts with the same keys, or txt-style lines.

Defaults and fix-ups are sd-scripts' (``line_to_prompt_dict`` / ``sample_image_inference``):
512 x 512, 30 steps, scale 7.5, random seed; width and height floored to a multiple of 8 and
at least 64; steps clamped to 1-1000. Where sd-scripts silently ignores an option it cannot
parse (``--w big``, ``--x 3``, an unknown sampler that falls back to DDIM), this module
raises a ProfileError naming the file, the line (or entry) and the option. Options that
sd-scripts only uses for other architectures (``--cn``, ``--ctr``, ``--rcfg``, ``--fs``) are
ignored with a logged warning, so one prompt file can serve several trainers; ``--g`` (Flux's
distilled guidance) is read and used by Flux models only.

This module is pure Python (no torch): the wizard and ``lora-train check`` can read a prompt
file before torch is even installed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_core.errors import ProfileError, closest
from lora_core.profile import SAMPLERS, SampleSection

log = logging.getLogger(__name__)

DEFAULT_SIZE_PX = 512
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5
MIN_SIZE_PX = 64
MAX_STEPS = 1000
SUFFIXES = (".txt", ".toml", ".json")
# PNDM starts with 4 Runge-Kutta steps (pndm_order); diffusers fails on fewer.
MIN_STEPS = {"pndm": 4}

# txt option -> key of the toml/json form (sd-scripts' prompt_dict keys).
TXT_OPTIONS = {"n": "negative_prompt", "w": "width", "h": "height", "d": "seed",
               "s": "sample_steps", "l": "scale", "ss": "sample_sampler"}
# sd-scripts options for other architectures (FLUX, ControlNet, Lumina, SD3...): ignored.
OTHER_ARCH_OPTIONS = {"g": "guidance_scale", "cn": "controlnet_image", "ctr": "cfg_trunc_ratio",
                      "rcfg": "renorm_cfg", "fs": "flow_shift"}
KEYS = ("prompt", *TXT_OPTIONS.values())
FLUX_GUIDANCE_OPTION = "g"
_OPTIONS_HINT = ("options are --n <negative prompt>, --w <width>, --h <height>, --d <seed>, "
                 "--s <steps>, --l <CFG scale>, --ss <sampler>")


@dataclass(frozen=True)
class SamplePrompt:
    """One preview image to make: the prompt and its settings after sd-scripts' fix-ups."""

    prompt: str
    negative_prompt: str | None = None
    width: int = DEFAULT_SIZE_PX
    height: int = DEFAULT_SIZE_PX
    seed: int | None = None  # None: a fresh random seed at every sampling
    sample_steps: int = DEFAULT_STEPS
    scale: float = DEFAULT_SCALE  # classifier-free guidance scale; <= 1 turns CFG off
    sampler: str = "ddim"
    # Flux: the distilled guidance value (--g) and whether --l was given (Flux samples use
    # true CFG only then). Not part of equality: SD ignores both.
    guidance_scale: float | None = field(default=None, compare=False)
    scale_given: bool = field(default=False, compare=False)
    # Whether --s was given: a family with another default (Flux: 20) uses it only then.
    steps_given: bool = field(default=False, compare=False)


# ----------------------------------------------------------------------------------------
# Reading prompt files


def read_sample_prompts(path: Path, default_sampler: str) -> list[SamplePrompt]:
    """The prompts of a ``.txt``, ``.toml`` or ``.json`` prompt file, in file order.

    ``default_sampler`` is the profile's ``sample_sampler``, used where a prompt names none.
    Raises ProfileError naming the file, the line or entry, and the option for anything
    that cannot be read. A file without prompts gives an empty list.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ProfileError(f"sample prompt file {path}: unknown kind {path.suffix or '(none)'!r}",
                           "name a .txt, .toml or .json prompt file in `[sample] sample_prompts`")
    text = _read_text(path)
    if suffix == ".txt":
        return [_txt_prompt(line, path, f"line {number}", default_sampler)
                for number, line in enumerate(text.splitlines(), start=1) if _is_prompt(line)]
    entries = _toml_entries(text, path) if suffix == ".toml" else _json_entries(text, path)
    prompts = []
    for where, entry in entries:
        if isinstance(entry, str):
            prompts.append(_txt_prompt(entry, path, where, default_sampler))
        elif isinstance(entry, dict):
            prompts.append(_dict_prompt(entry, path, where, default_sampler))
        else:
            raise ProfileError(f"sample prompt file {path}, {where}: expected a prompt (text or "
                               f"a table of keys), found {type(entry).__name__}",
                               "write each prompt as a string or as {\"prompt\": ..., ...}")
    return prompts


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: Windows editors put a byte-order mark first, which is not prompt text.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ProfileError(f"sample prompt file {path} does not exist",
                           "check `[sample] sample_prompts` (relative paths start at the "
                           "profile's folder)") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ProfileError(f"sample prompt file {path}, line {line}: not UTF-8 text",
                           "save the file as UTF-8 in your editor") from None
    except OSError as exc:
        raise ProfileError(f"cannot read sample prompt file {path}: {exc.strerror or exc}",
                           "check the path and the file's permissions") from None


def _is_prompt(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _toml_entries(text: str, path: Path) -> list[tuple[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"sample prompt file {path} is not valid TOML: {exc}",
                           "fix the line it names; the form is a [prompt] table of defaults "
                           "and one [[prompt.subset]] per prompt") from None
    unknown = sorted(set(data) - {"prompt"})
    table = data.get("prompt")
    if unknown or not isinstance(table, dict):
        raise ProfileError(f"sample prompt file {path}: expected one [prompt] table"
                           + (f", found [{unknown[0]}]" if unknown else ""),
                           "put shared settings in [prompt] and each prompt in a "
                           "[[prompt.subset]] with at least prompt = \"...\"")
    subsets = table.get("subset")
    if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
        raise ProfileError(f"sample prompt file {path}: [prompt] has no [[prompt.subset]] list",
                           "add one [[prompt.subset]] table per prompt")
    defaults = {k: v for k, v in table.items() if k != "subset"}
    return [(f"[[prompt.subset]] {i}", {**defaults, **subset})
            for i, subset in enumerate(subsets, start=1)]


def _json_entries(text: str, path: Path) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"sample prompt file {path}, line {exc.lineno}: not valid JSON "
                           f"({exc.msg})", "fix that line; the file must be a list of "
                           "prompts") from None
    if not isinstance(data, list):
        raise ProfileError(f"sample prompt file {path}: expected a JSON list of prompts, found "
                           f"{type(data).__name__}", "write [\"a prompt --w 512\", "
                           "{\"prompt\": \"another\", \"seed\": 1}]")
    return [(f"item {i}", entry) for i, entry in enumerate(data, start=1)]


def _txt_prompt(line: str, path: Path, where: str, default_sampler: str) -> SamplePrompt:
    """One txt-style line: the prompt, then ``" --<option> <value>"`` parts."""
    # A leading space lets a line that starts with an option have an empty prompt.
    prompt, *parts = (" " + line.strip()).split(" --")
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for part in parts:
        name, _, value = part.strip().partition(" ")
        option, value = name.lower(), value.strip()
        if option in OTHER_ARCH_OPTIONS:
            if option == FLUX_GUIDANCE_OPTION:  # read for Flux, ignored by SD
                values["guidance_scale"] = _txt_number(value, "scale", path, where, "--g")
                log.info("sample prompt file %s, %s: --%s (%s) is read by Flux models only",
                         path, where, name, OTHER_ARCH_OPTIONS[option])
                continue
            log.warning("sample prompt file %s, %s: --%s (%s) applies to other model types "
                        "and is ignored", path, where, name, OTHER_ARCH_OPTIONS[option])
            continue
        if option not in TXT_OPTIONS:
            guess = closest(option, list(TXT_OPTIONS))
            raise ProfileError(
                f"sample prompt file {path}, {where}: unknown option --{name}"
                + (f"; did you mean --{guess}?" if guess else ""),
                _OPTIONS_HINT + "; each option needs a space before its --")
        if not value:
            raise ProfileError(f"sample prompt file {path}, {where}: --{name} has no value",
                               _OPTIONS_HINT)
        key = TXT_OPTIONS[option]
        values[key] = value if key in ("negative_prompt", "sample_sampler") else \
            _txt_number(value, key, path, where, f"--{name}")
    return _make_prompt(values, path, where, default_sampler, txt=True)


def _txt_number(value: str, key: str, path: Path, where: str, label: str) -> int | float:
    try:
        return float(value) if key == "scale" else int(value)
    except ValueError:
        kind = "a number" if key == "scale" else "a whole number"
        raise ProfileError(f"sample prompt file {path}, {where}: {label} {value!r} is not "
                           f"{kind}", _VALUE_HINTS[key]) from None


_VALUE_HINTS = {
    "prompt": "write the prompt as text",
    "negative_prompt": "write the negative prompt as text",
    "width": "give the width in pixels, like --w 512 (width = 512)",
    "height": "give the height in pixels, like --h 512 (height = 512)",
    "seed": "give a whole number of 0 or more, like --d 42 (seed = 42), or leave it out for "
            "a random seed",
    "sample_steps": "give the number of denoising steps, like --s 30 (sample_steps = 30)",
    "scale": "give the CFG scale, like --l 7.5 (scale = 7.5)",
    "sample_sampler": "use one of: " + ", ".join(SAMPLERS),
}


def _dict_prompt(entry: dict[str, Any], path: Path, where: str,
                 default_sampler: str) -> SamplePrompt:
    values = {}
    for key, value in entry.items():
        if key in OTHER_ARCH_OPTIONS.values():
            if key == "guidance_scale":  # read for Flux, ignored by SD
                values[key] = value
                log.info("sample prompt file %s, %s: %s is read by Flux models only", path,
                         where, key)
                continue
            log.warning("sample prompt file %s, %s: %s applies to other model types and is "
                        "ignored", path, where, key)
            continue
        if key not in KEYS:
            guess = closest(key, list(KEYS))
            raise ProfileError(f"sample prompt file {path}, {where}: unknown key {key!r}"
                               + (f"; did you mean {guess!r}?" if guess else ""),
                               "keys are " + ", ".join(KEYS))
        values[key] = value
    return _make_prompt(values, path, where, default_sampler, txt=False)


def _make_prompt(values: dict[str, Any], path: Path, where: str, default_sampler: str,
                 *, txt: bool) -> SamplePrompt:
    """Check the types and ranges of parsed values and apply sd-scripts' fix-ups."""
    option = {key: f"--{opt}" for opt, key in TXT_OPTIONS.items()} if txt else {}

    def fail(key: str, problem: str) -> ProfileError:
        label = option.get(key, key)
        return ProfileError(f"sample prompt file {path}, {where}: {label} {problem}",
                            _VALUE_HINTS[key])

    def text(key: str) -> str | None:
        value = values.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"= {value!r} must be text")
        return value

    def whole(key: str, default: int | None) -> int | None:
        value = values.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(key, f"= {value!r} must be a whole number")
        if value < 0:
            raise fail(key, f"= {value} must not be negative")
        return value

    scale = values.get("scale", DEFAULT_SCALE)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise fail("scale", f"= {scale!r} must be a number")
    if not math.isfinite(scale) or scale < 0:
        raise fail("scale", f"= {scale} must be a finite number of 0 or more")
    guidance = values.get("guidance_scale")
    if guidance is not None and (isinstance(guidance, bool)
                                 or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance) or guidance < 0):
        raise ProfileError(f"sample prompt file {path}, {where}: "
                           f"{'--g' if txt else 'guidance_scale'} = {guidance!r} must be a "
                           "number of 0 or more", "give Flux's guidance like --g 3.5")
    sampler = text("sample_sampler") or default_sampler
    if sampler.lower() not in SAMPLERS:
        guess = closest(sampler.lower(), list(SAMPLERS))
        raise fail("sample_sampler", f"{sampler!r} is not a sampler"
                   + (f"; did you mean {guess!r}?" if guess else ""))
    steps = max(1, min(MAX_STEPS, whole("sample_steps", DEFAULT_STEPS)))
    if steps < MIN_STEPS.get(sampler.lower(), 1):
        raise fail("sample_steps", f"= {steps} is too few for the {sampler.lower()} sampler, "
                   f"which needs at least {MIN_STEPS[sampler.lower()]}")
    seed = whole("seed", None)
    if seed is not None and seed >= 2**64:
        raise fail("seed", f"= {seed} is too large (seeds are below 2^64)")
    return SamplePrompt(
        prompt=text("prompt") or "",
        negative_prompt=text("negative_prompt"),
        width=_fix_size(whole("width", DEFAULT_SIZE_PX)),
        height=_fix_size(whole("height", DEFAULT_SIZE_PX)),
        seed=seed,
        sample_steps=steps,  # clamped, as sd-scripts does rather than refusing it
        scale=float(scale),
        sampler=sampler.lower(),
        guidance_scale=None if guidance is None else float(guidance),
        scale_given="scale" in values,
        steps_given="sample_steps" in values,
    )


def _fix_size(px: int) -> int:
    """sd-scripts: the latent grid is 1/8 of the image, so sizes are floored to a multiple
    of 8, and never below 64."""
    return max(MIN_SIZE_PX, px - px % 8)


# ----------------------------------------------------------------------------------------
# When to sample, and what the files are called


def should_sample(sample: SampleSection, *, step: int | None = None, epoch: int | None = None,
                  first: bool = False) -> bool:
    """Whether to make preview images now (sd-scripts' ``sample_images_common`` rules).

    * ``first=True``: before the first step; only with ``sample_at_first``.
    * ``epoch=e`` (1-based, at the end of epoch e): when ``sample_every_n_epochs`` divides e.
    * ``step=s`` (after optimizer step s, mid-epoch): when ``sample_every_n_steps`` divides
      s, but never when ``sample_every_n_epochs`` is set: epoch-based sampling wins.
    Nothing is sampled without a prompt file.
    """
    if not sample.sample_prompts:
        return False
    if first:
        return sample.sample_at_first
    if epoch is not None:
        return bool(sample.sample_every_n_epochs) and epoch % sample.sample_every_n_epochs == 0
    if step is not None:
        return (sample.sample_every_n_epochs is None and bool(sample.sample_every_n_steps)
                and step % sample.sample_every_n_steps == 0)
    return False


def sample_points(sample: SampleSection, max_train_steps: int, steps_per_epoch: int,
                  num_epochs: int) -> list[int]:
    """The global steps after which preview images are made (0: before the first step), in
    the order the loop reaches them: what :func:`should_sample` will answer in a run."""
    points = [0] if should_sample(sample, first=True) else []
    for step in range(1, max_train_steps + 1):
        if should_sample(sample, step=step):
            points.append(step)
    for epoch in range(1, num_epochs + 1):
        if should_sample(sample, epoch=epoch):
            points.append(min(epoch * steps_per_epoch, max_train_steps))
    return sorted(points)


def sample_file_name(output_name: str, *, step: int, epoch: int | None, index: int,
                     timestamp: float, seed: int | None) -> str:
    """``<output_name>_<e######|######>_<NN>_<YYYYmmddHHMMSS>[_<seed>].png`` (§9).

    ``e`` + epoch for samples made at an epoch boundary (sd-scripts passes epoch 0 for
    ``sample_at_first``, so those are ``e000000`` too), else the 6-digit step; ``NN`` is
    the prompt's index in the file; the seed is appended only when the prompt sets one
    (a random seed is not in the name, as in sd-scripts). ``timestamp`` is unix seconds,
    written in local time.
    """
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(timestamp))
    seed_part = "" if seed is None else f"_{seed}"
    return f"{output_name}_{number}_{index:02d}_{stamp}{seed_part}.png"
