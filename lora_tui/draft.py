"""The profile being edited: every answer kept as the text the user typed, checked by the
profile's own rules.

The wizard never re-implements a validation rule. A draft turns its texts into a plain
TOML-like dict (``values.parse_text``, the engine profiles and dataset configs are read with)
and hands it to :func:`lora_core.profile_load.read_profile`; the problems that come back are
values that name their field, so each one is shown under the input it is about. Everything
the wizard shows about a field (its label, default, one-line doc, whether it is a path, a
choice or a switch) comes from the field's ``setting`` metadata.

Empty text means "use the default"; ``0`` is a value like any other. Fields the wizard never
shows (a loaded profile's ``shuffle_caption``, say) are carried through untouched.
Some defaults depend on other answers, as LETS' popup made them: with an optimizer that
finds its own step size (DAdaptation*, Prodigy) an unanswered learning rate is 1.0, not 1e-4.
Fields that do not apply to the other answers (``steps.CONDITIONS``) keep their text but
stay out of the profile. Wizard-only questions (section ``"wizard"``) are kept here too:
the "realistic or anime" choice reads and writes ``clip_skip``; typed sample prompts are
held until the profile is saved (see ``screens.review.save_draft``).
Typed prompts are kept in a working file in the state folder while they are typed, so the
profile (and the review's preflight) check them like any prompt file before it is saved.
Beyond that file, this module does no file I/O other than what ``profile_io`` and
``inspect_model`` (a safetensors header) do, and it imports no textual.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lora_core.checks.fields import FIELDS_HINT
from lora_core.checks.machine import ProbedMachine, mixed_precision_for
from lora_core.checks.problem import Problem, errors_of, raise_for_errors
from lora_core.errors import LoraError, ProfileError
from lora_core.models.loading import ModelSource, inspect_model
from lora_core.paths import state_dir
from lora_core.profile import SECTIONS, Profile, conditional_default, section_to_dict
from lora_core.profile_io import read_profile_dict
from lora_core.profile_load import profile_from_dict, read_profile
from lora_core.values import Resolution, parse_text, type_parts
from lora_tui.flux_files import FluxModel, flux_model
from lora_tui.steps import WIZARD, WIZARD_QUESTIONS, applies, dropped_when_hidden

FieldKey = tuple[str, str]


def sections_of(profile: Profile) -> dict[str, dict[str, Any]]:
    """Every section of ``profile`` as plain values, ``[flux]`` included (``profile_to_dict``
    leaves an all-default ``[flux]`` out of saved files; the wizard compares every field)."""
    return {name: section_to_dict(getattr(profile, name)) for name in SECTIONS}


@dataclass(frozen=True)
class FieldSpec:
    """What the wizard needs to draw one profile field, read from its ``setting`` metadata.

    ``kind`` picks the input: "switch" (bool), "tristate" (bool or unset), "choice",
    "number" (int/float, maybe unset), "list" (list of strings) or "text".
    """

    section: str
    key: str
    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] | None
    is_path: bool
    required: bool
    optional: bool  # None (unset) is allowed
    labels: tuple[str, ...] | None = None  # shown for the choices (default: the choices)
    hint: Any = str  # the field's type hint (values.parse_text reads typed text by it)

    @property
    def label(self) -> str:
        return self.key.replace("_", " ")

    @property
    def default_text(self) -> str:
        """How the default is shown next to the field."""
        if self.default is None:
            return "unset"
        if self.default == "" or self.default == []:
            return "empty"
        return to_text(self.default)


def field_spec(section: str, key: str) -> FieldSpec:
    """The spec of ``[section] key``; KeyError when the profile has no such field."""
    cls = SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    f = fields[key]
    hint = typing.get_type_hints(cls)[key]
    parts, optional = type_parts(hint)
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if meta["choices"]:
        kind = "choice"
    elif parts == [bool]:
        kind = "tristate" if optional else "switch"
    elif all(p in (int, float) for p in parts):
        kind = "number"
    elif any(typing.get_origin(p) is list for p in parts):
        kind = "list"
    else:
        kind = "text"
    return FieldSpec(section, key, kind, default, meta["doc"], meta["choices"], meta["path"],
                     meta["required"], optional, hint=hint)


def spec_for(section: str, key: str) -> FieldSpec:
    """The spec of a profile field or of a wizard question (section ``"wizard"``)."""
    if section != WIZARD:
        return field_spec(section, key)
    q = WIZARD_QUESTIONS[key]
    return FieldSpec(WIZARD, key, q.kind, q.default, q.doc, q.choices, False, False, False,
                     q.labels)


@cache
def machine_precision() -> tuple[str, str]:
    """The ``mixed_precision`` for this machine and why (``mixed_precision_for``: the torch
    build and the GPU driver are asked once, torch is never imported)."""
    return mixed_precision_for(ProbedMachine())


def to_text(value: Any) -> str:
    """A profile value as the text the draft keeps (the inverse of :func:`from_text`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_string(v) for v in value) + "]"
    if isinstance(value, tuple):  # numbers, like [flux] in_dims
        return "[" + ", ".join(to_text(v) for v in value) + "]"
    if isinstance(value, Resolution):
        return str(value.to_toml())
    return str(value)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def from_text(spec: FieldSpec, text: str) -> Any:
    """The value to hand to the profile for ``text`` (``None`` when the text is empty):
    ``values.parse_text`` by the field's type, so ``0``, ``1e-4`` and ``["a"]`` mean what they
    mean in a profile file, and text that does not parse is passed on as it is for the
    profile's own check to name ("has the wrong type: it must be an integer")."""
    if spec.kind == "choice":
        return text if text.strip() else None
    return parse_text(text, spec.hint)


@dataclass
class Validation:
    """The result of checking a draft: the problems reading it found, and the profile when
    there is no error."""

    problems: list[Problem]
    profile: Profile | None

    @property
    def field_errors(self) -> dict[FieldKey, list[str]]:
        found: dict[FieldKey, list[str]] = {}
        for problem in errors_of(self.problems):
            if problem.field:
                found.setdefault(problem.field, []).append(problem.message)
        return found

    @property
    def other_errors(self) -> list[str]:
        return [p.message for p in errors_of(self.problems) if not p.field]

    def for_field(self, section: str, key: str) -> list[str]:
        return self.field_errors.get((section, key), [])


class Draft:
    """The answers so far. ``base_dir`` anchors relative paths (the profile file's folder)."""

    def __init__(self, base_dir: Path | None = None, source_path: Path | None = None) -> None:
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self.source_path = source_path  # the file it was loaded from or last saved to
        self._texts: dict[FieldKey, str] = {}
        self.typed_prompts = ""  # sample prompts typed in the wizard, one per line
        self.dirty = False  # changed since loaded or saved
        self._model_cache: tuple[tuple[str, Path], ModelSource | LoraError] | None = None
        self._flux_cache: tuple[ModelSource, FluxModel | None] | None = None
        self._written_prompts: str | None = None  # what the working prompt file holds
        self.import_report = ""  # what an import did with each option (lora-train import's)

    @classmethod
    def new(cls) -> Draft:
        """A new profile's draft. ``mixed_precision`` is written for this machine
        (:func:`machine_precision`: "no" on a CPU, where the profile's default fp16 would be
        refused at step 15), as an answer the user can change; the draft counts as unchanged."""
        draft = cls()
        draft._texts[("training", "mixed_precision")] = machine_precision()[0]
        return draft

    @classmethod
    def from_profile(cls, profile: Profile, source_path: Path | None = None) -> Draft:
        draft = cls(profile.base_dir, source_path)
        defaults = sections_of(Profile())
        for section, values in sections_of(profile).items():
            for key, value in values.items():
                if defaults[section].get(key) != value:
                    draft._texts[(section, key)] = to_text(value)
        return draft

    @classmethod
    def from_import(cls, source: Path | str, text: str | None = None
                    ) -> tuple[Draft, str]:
        """A draft of settings from another tool (``lora-train import``: a command line, an
        sd-scripts or LETS TOML, a kohya_ss or LETS JSON, a LoRA's metadata), tied to no
        file, and the import's report. Values the profile refuses keep their defaults and
        are in the report; paths are kept as written."""
        from lora_core.importing import import_source

        result = import_source(source, text)
        written = ""
        if result.dataset_config is not None:
            # The subsets a LETS file lists stay subsets: the dataset_config the profile needs
            # is written now (the draft has no file of its own yet), in the state folder.
            import time

            stamp, n = time.strftime("%Y%m%d-%H%M%S"), 1
            path = state_dir() / "imports" / f"import-{stamp}.dataset.toml"
            while path.exists():
                n += 1
                path = path.with_name(f"import-{stamp}-{n}.dataset.toml")
            result.write_dataset_config(path)
            written = f"\nWrote the dataset_config to {path}; the profile points at it."
        profile, _ = read_profile(result.data, Path.cwd())
        draft = cls.from_profile(profile, None)
        draft._keep_written_paths(result.data)
        draft.dirty = True
        draft.import_report = result.render() + written
        return draft, draft.import_report

    @classmethod
    def from_file(cls, path: Path) -> Draft:
        """A draft of the profile file ``path`` (LoraError when it cannot be used), with
        every path as the file writes it, so saving it back keeps them as they were."""
        path = Path(path)
        data = read_profile_dict(path)
        draft = cls.from_profile(profile_from_dict(data, base_dir=path.resolve().parent,
                                                   source=str(path)), path)
        draft._keep_written_paths(data)
        return draft

    def _keep_written_paths(self, data: dict) -> None:
        """Path fields as ``data`` writes them (relative, or another machine's), not resolved,
        so saving keeps them as they were."""
        for section, cls_ in SECTIONS.items():
            for f in dataclasses.fields(cls_):
                written = data.get(section, {}).get(f.name) if f.metadata["path"] else None
                if isinstance(written, str) and written:
                    self._texts[(section, f.name)] = written

    def text(self, section: str, key: str) -> str:
        if section == WIZARD:
            return self._wizard_text(key)
        return self._texts.get((section, key), "")

    def set_text(self, section: str, key: str, text: str) -> None:
        if section == WIZARD:
            self._set_wizard_text(key, text)
            return
        field_spec(section, key)  # an unknown field is a programming error: fail here
        if self._texts.get((section, key), "") != text:
            self.dirty = True
        if text == "":
            self._texts.pop((section, key), None)
        else:
            self._texts[(section, key)] = text

    # -- wizard-only questions ----------------------------------------------------------

    def _wizard_text(self, key: str) -> str:
        if key == "model_style":
            clip_skip = self.current("model", "clip_skip")
            return {"1": "realistic", "2": "anime"}.get(clip_skip, "other")
        if key == "typed_prompts":
            return self.typed_prompts
        raise KeyError(key)

    def _set_wizard_text(self, key: str, text: str) -> None:
        if key == "model_style":
            # "other" keeps whatever clip_skip the advanced field holds.
            clip_skip = {"realistic": "1", "anime": "2"}.get(text)
            if clip_skip is not None and clip_skip != self.current("model", "clip_skip"):
                self.set_text("model", "clip_skip", clip_skip)
        elif key == "typed_prompts":
            if text != self.typed_prompts:
                self.typed_prompts, self.dirty = text, True
        else:
            raise KeyError(key)

    # -- answers as the profile will read them -----------------------------------------

    def default_for(self, section: str, key: str) -> Any:
        """The field's default given the other answers, as the profile declares it
        (``default_when``: the learning rate's is 1.0 for the optimizers that find their own
        step size, as LETS' popup switched it, wizard-anchors.md §a, #9)."""
        given = None if section == WIZARD else conditional_default(section, key, self.current)
        return given if given is not None else spec_for(section, key).default

    def default_text(self, section: str, key: str) -> str:
        """How the default is shown next to the field."""
        spec = spec_for(section, key)
        return dataclasses.replace(spec, default=self.default_for(section, key)).default_text

    def current(self, section: str, key: str) -> str:
        """The answer as text, or the default's text when unanswered (for conditions)."""
        return self.text(section, key) or to_text(self.default_for(section, key))

    def model_source(self) -> ModelSource | LoraError:
        """What the base model is (``inspect_model``: headers only), or why it cannot be
        used. Cached for the current path, since every keystroke asks."""
        key = (self.text("model", "pretrained_model_name_or_path"), self.base_dir)
        if self._model_cache is None or self._model_cache[0] != key:
            try:
                result: ModelSource | LoraError = inspect_model(key[0], key[1])
            except LoraError as exc:
                result = exc
            self._model_cache = (key, result)
        return self._model_cache[1]

    def model_family(self) -> str | None:
        """"sd1" / "sd2" / "sdxl" / "flux" when the weights tell, else None."""
        source = self.model_source()
        return None if isinstance(source, LoraError) else source.family

    def flux_model(self) -> FluxModel | None:
        """The Flux model the base model is (variant, built-in or file); None for another
        family or a model that cannot be read. Cached with the model."""
        source = self.model_source()
        if isinstance(source, LoraError):
            return None
        if self._flux_cache is None or self._flux_cache[0] is not source:
            self._flux_cache = (source, flux_model(source))
        return self._flux_cache[1]

    def typed_prompts_file(self) -> Path:
        """The working copy of the typed prompts (written when they changed)."""
        path = state_dir() / "wizard" / f"typed-prompts-{os.getpid()}-{id(self)}.txt"
        text = self.typed_prompts.strip() + "\n"
        if self._written_prompts != text or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            self._written_prompts = text
        return path

    def applies(self, section: str, key: str) -> bool:
        return applies(self, section, key)

    def data(self, placeholders: dict[FieldKey, Any] | None = None) -> dict[str, Any]:
        """The answers as the dict a profile file would hold (empty texts left out, and the
        texts of fields that do not apply to the other answers)."""
        data: dict[str, Any] = {}
        for (section, key), text in self._texts.items():
            if dropped_when_hidden(section, key) and not applies(self, section, key):
                continue
            value = from_text(field_spec(section, key), text)
            if value is not None:
                data.setdefault(section, {})[key] = value
        if self.typed_prompts.strip():
            # Typed prompts win over a named file: they are what saving writes and names.
            data.setdefault("sample", {})["sample_prompts"] = str(self.typed_prompts_file())
        if self.text("optimizer", "learning_rate") == "":
            default = self.default_for("optimizer", "learning_rate")
            if default != field_spec("optimizer", "learning_rate").default:
                data.setdefault("optimizer", {})["learning_rate"] = default
        for (section, key), value in (placeholders or {}).items():
            data.setdefault(section, {}).setdefault(key, value)
        return data

    def validate(self, placeholders: dict[FieldKey, Any] | None = None) -> Validation:
        """Check every answer with the profile's rules (each problem names its field)."""
        profile, problems = read_profile(self.data(placeholders), base_dir=self.base_dir)
        return Validation(problems, None if errors_of(problems) else profile)

    def profile(self) -> Profile:
        """The validated profile; raises ProfileError listing every problem."""
        profile, problems = read_profile(self.data(), base_dir=self.base_dir)
        raise_for_errors(problems, "the profile has", FIELDS_HINT, ProfileError)
        return profile

    def differences(self) -> list[tuple[str, str, Any, Any]]:
        """(section, key, value, default) of every field the profile sets to a non-default."""
        profile = self.profile()
        ours, defaults = sections_of(profile), sections_of(Profile())
        rows = []
        for section in SECTIONS:
            for f in dataclasses.fields(SECTIONS[section]):
                value = ours[section].get(f.name)
                default = defaults[section].get(f.name)
                if value != default:
                    rows.append((section, f.name, value, default))
        return rows
