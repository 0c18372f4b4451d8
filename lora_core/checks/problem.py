"""A problem found by a check: a value, not a line of text.

Every check returns :class:`Problem` values: how bad it is (an ``error`` stops a run, a
``warning`` is worth reading), where it is (a profile field ``[section] key``, or a file or
folder), what happened and what to do. The CLI prints them, the wizard shows each one next
to the field it names, tests compare them. :func:`raise_for_errors` turns the errors into
the one exception a run stops with, listing all of them (``LoraError.problems`` keeps the
values for whoever catches it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lora_core.errors import LoraError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str = ""
    severity: Severity = "error"
    section: str | None = None  # the profile field it is about: [section] key
    key: str | None = None
    path: str | None = None  # the file or folder it is about

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def field(self) -> tuple[str, str] | None:
        return (self.section, self.key) if self.section and self.key else None

    @property
    def where(self) -> str:
        """"[section] key", the file, or "" when it is about the run as a whole."""
        if self.field:
            return f"[{self.section}] {self.key}"
        return self.path or ""

    def text(self) -> str:
        """The message, then the hint when there is one (one line for a list)."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


def error(message: str, hint: str = "", *, section: str | None = None, key: str | None = None,
          path: object = None) -> Problem:
    return Problem(message, hint, "error", section, key, str(path) if path else None)


def warning(message: str, hint: str = "", *, section: str | None = None,
            key: str | None = None, path: object = None) -> Problem:
    return Problem(message, hint, "warning", section, key, str(path) if path else None)


def from_error(exc: LoraError, *, section: str | None = None, key: str | None = None,
               path: object = None) -> list[Problem]:
    """The problems an exception carries (its own list when it has one)."""
    if exc.problems:
        return list(exc.problems)
    return [error(exc.message, exc.hint, section=section, key=key, path=path)]


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def warnings_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if not p.is_error]


def raise_for_errors(problems: Iterable[Problem], what: str, hint: str,
                     error_type: type[LoraError] = LoraError) -> None:
    """Raise ``error_type`` listing every error in ``problems`` (warnings are ignored):
    "<what> has N problems:" then one line each."""
    errors = errors_of(problems)
    if not errors:
        return
    count = len(errors)
    lines = "\n  - ".join(p.text() for p in errors)
    raise error_type(f"{what} {count} problem{'s' if count > 1 else ''}:\n  - {lines}", hint,
                     problems=errors)
