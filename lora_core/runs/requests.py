"""Asking a running run to act now: save a LoRA file or make sample images after its step.

OneTrainer's "save now" and "sample now", for a run that may be on another terminal or
reached over SSH: ``lora-train signal RUN_FOLDER --save-now`` (or the training screen's keys)
drops a file named after the action into the run folder's ``requests/``; the training loop
looks there after every optimizer step, takes what it finds (the files are removed) and acts
before the next step. A file, not a signal: it works the same on Windows, survives the asker
exiting, and two asks before the next step are one action.
"""

from __future__ import annotations

from pathlib import Path

REQUESTS_DIR = "requests"
SAVE_NOW = "save-now"
SAMPLE_NOW = "sample-now"
ACTIONS = (SAVE_NOW, SAMPLE_NOW)


def request_action(run_dir: Path, action: str) -> Path:
    """Leave ``action`` for the run in ``run_dir`` to take after its current step."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; the actions are {', '.join(ACTIONS)}")
    folder = Path(run_dir) / REQUESTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / action
    path.touch()
    return path


def take_requests(run_dir: Path) -> set[str]:
    """The actions asked for since the last look, each removed as it is taken (an unknown
    file is left alone). One ``stat`` when nothing was asked."""
    folder = Path(run_dir) / REQUESTS_DIR
    if not folder.is_dir():
        return set()
    taken = set()
    for action in ACTIONS:
        try:
            (folder / action).unlink()
        except FileNotFoundError:
            continue
        taken.add(action)
    return taken
