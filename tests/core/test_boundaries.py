"""Import boundaries: the core never imports the UI; light entry points never import torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import lora_core

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes")


def modules_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return set(out.split())


def test_core_never_imports_textual():
    names = [m.name for m in pkgutil.walk_packages(lora_core.__path__, "lora_core.")]
    code = "\n".join(f"import {n}" for n in names)
    loaded = modules_after(code)
    assert "textual" not in loaded
    assert "lora_tui" not in loaded


def test_profile_check_and_cli_start_without_torch():
    loaded = modules_after(
        "import lora_core.cli, lora_core.profile_io, lora_core.checks, "
        "lora_core.dataset.report, lora_core.events, lora_core.models.loading")
    assert not [m for m in HEAVY if m in loaded]
