"""Run folders and the record of the last run.

Every run gets ``<output_dir>/runs/<output_name>-<YYYYmmdd-HHMMSS>/`` holding:

* ``profile.toml``: the resolved profile (absolute paths, overrides applied), enough to run
  the same training again from anywhere;
* ``events.jsonl``: the event stream, one JSON object per line (what a UI re-attaches to);
* ``train.log``: the full log, tracebacks included.

The state folder (``paths.state_dir()``) keeps ``last_run.json`` for ``rerun-last``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core.atomic import atomic_write_bytes
from lora_core.errors import LoraError, OutputError
from lora_core.paths import state_dir
from lora_core.profile import Profile
from lora_core.profile_io import save_profile

PROFILE_FILE = "profile.toml"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "train.log"
LAST_RUN_FILE = "last_run.json"


@dataclass
class RunFolder:
    path: Path

    @property
    def profile(self) -> Path:
        return self.path / PROFILE_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE


def create_run_folder(output_dir: Path, output_name: str, profile: Profile) -> RunFolder:
    """Make a new, uniquely named run folder and store the resolved profile in it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = output_dir / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            path = runs / (f"{output_name}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                path.mkdir()
                break
            except FileExistsError:
                n += 1
    except OSError as exc:
        raise OutputError(f"cannot create a run folder in {runs}: {exc.strerror or exc}",
                          "set `[saving] output_dir` to a folder you can write to") from None
    folder = RunFolder(path)
    save_profile(profile, folder.profile)
    return folder


def record_last_run(folder: RunFolder, profile_path: Path | None) -> None:
    data = {"run_dir": str(folder.path), "profile": str(folder.profile),
            "source_profile": str(profile_path) if profile_path else None,
            "started_at": time.time()}
    try:
        atomic_write_bytes(state_dir() / LAST_RUN_FILE, json.dumps(data, indent=2).encode())
    except LoraError:
        pass  # rerun-last is a convenience; a read-only state folder must not stop training


def last_run() -> dict:
    path = state_dir() / LAST_RUN_FILE
    if not path.is_file():
        raise LoraError("no earlier run is recorded on this machine",
                        "start one with `lora-train run PROFILE.toml`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraError(f"the record of the last run ({path}) is unreadable: {exc}",
                        "delete that file and start a run with `lora-train run`") from None
    if not Path(data.get("profile", "")).is_file():
        raise LoraError(f"the last run's profile {data.get('profile')} no longer exists",
                        "its run folder was moved or deleted; run a profile directly")
    return data
