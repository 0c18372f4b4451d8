"""Test isolation: no network, no GPU, nothing written to the developer's home directory.

The environment is set before anything imports huggingface_hub, diffusers or torch. The
built-in tiny model is built once per test session into a temporary cache.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="lora-tui-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf-home")
os.environ["LORA_TUI_CACHE_DIR"] = os.environ.get("LORA_TUI_TEST_CACHE_DIR",
                                                  str(_SESSION_TMP / "cache"))
os.environ["LORA_TUI_STATE_DIR"] = str(_SESSION_TMP / "state")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """A private state folder (last run record, logs) for one test."""
    path = tmp_path / "state"
    monkeypatch.setenv("LORA_TUI_STATE_DIR", str(path))
    return path


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Call ``lora_core.cli.main`` in-process; returns (exit code, stdout, stderr).

    main() reconfigures the root logger, routes warnings to logging and (for ``run``)
    installs SIGINT/SIGTERM handlers; all of that is put back so later tests see the
    process as it was. Runs with a private state folder."""
    import logging
    import signal

    from lora_core.cli import main

    monkeypatch.setenv("LORA_TUI_STATE_DIR", str(tmp_path / "state"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield call
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    signal.signal(signal.SIGINT, sigint)
    signal.signal(signal.SIGTERM, sigterm)
