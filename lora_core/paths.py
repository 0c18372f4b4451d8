"""Where lora-train keeps its own files: a cache (built-in models) and a state folder
(the record of the last run, for `rerun-last`). Both can be moved with environment
variables, which the tests use so that they never touch the user's home directory. And
which paths written in a profile are plainly another machine's (:func:`foreign_path`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# C:\... or C:/... (a drive letter); \\server\share (a network share) is told apart below.
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")


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


def compile_cache_dir() -> Path:
    """Where torch_compile's kernels are kept between runs (training.compiling):
    LORA_TUI_COMPILE_CACHE_DIR (calibrate's measurements, which run with a state folder of
    their own, get the real one this way), else in the state folder."""
    if env := os.environ.get("LORA_TUI_COMPILE_CACHE_DIR"):
        return Path(env)
    return state_dir() / "compile-cache"


def foreign_path(text: str) -> str | None:
    """What makes ``text`` plainly another machine's path here ("a Windows drive path", "a
    Windows network share"), or None. On POSIX such a path is never joined to a local folder:
    "C:\\sd\\model.safetensors" from an imported Windows command would otherwise become
    "<profile folder>/C:\\sd\\model.safetensors". Always None on Windows."""
    if os.name == "nt":
        return None
    if _WINDOWS_DRIVE.match(text):
        return "a Windows drive path"
    if text.startswith("\\\\"):
        return "a Windows network share"
    return None
