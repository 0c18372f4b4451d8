"""Where lora-train keeps its own files: a cache (built-in models) and a state folder
(the record of the last run, for `rerun-last`). Both can be moved with environment
variables, which the tests use so that they never touch the user's home directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """LORA_TUI_CACHE_DIR, else $XDG_CACHE_HOME/lora-tui, else ~/.cache/lora-tui."""
    if env := os.environ.get("LORA_TUI_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lora-tui"


def state_dir() -> Path:
    """LORA_TUI_STATE_DIR, else $XDG_STATE_HOME/lora-tui, else ~/.local/state/lora-tui."""
    if env := os.environ.get("LORA_TUI_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lora-tui"
