"""One error family for everything the user can get wrong.

Every error carries a ``message`` (what happened, naming the file or field) and a ``hint``
(what to do about it). The CLI prints both and exits with the error's ``exit_code``; the
traceback goes to the run's log file, never to the screen. Nothing here imports torch.
"""

from __future__ import annotations

import difflib


class LoraError(Exception):
    """An error the user can act on: a message that names the thing, and a hint."""

    exit_code = 2
    # What went wrong, for a UI to offer a fix ("out_of_memory", "non_finite_loss",
    # "disk_full"); "" for everything else.
    kind = ""

    def __init__(self, message: str, hint: str = "", *, kind: str | None = None,
                 problems: list | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if kind is not None:
            self.kind = kind
        # The checks' Problem values behind a message that lists several (checks.problem).
        self.problems = list(problems or [])

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be (for "did you mean ...?")."""
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


class CheckError(LoraError):
    """The checks found something that would stop the run (``lora_core.checks``)."""


class ProfileError(LoraError):
    """A profile file or a field in it is wrong."""


class DatasetError(LoraError):
    """The dataset folders or their files are wrong."""


class ModelError(LoraError):
    """The base model cannot be found or loaded."""


class TrainingError(LoraError):
    """Training itself failed (NaN loss, out of memory, ...)."""

    exit_code = 1


class OutputError(LoraError):
    """A file cannot be written where the profile says."""


class NonFiniteError(TrainingError):
    """The loss or the network's weights became NaN or infinite."""

    kind = "non_finite_loss"


class OutOfMemoryError(TrainingError):
    """The GPU ran out of memory."""

    kind = "out_of_memory"
