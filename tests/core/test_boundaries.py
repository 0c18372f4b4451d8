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
    names = [m.name for m in pkgutil.walk_packages(lora_core.__path__, "lora_core.")
             if not m.name.endswith(".__main__")]  # running the CLI is not importing it
    code = "\n".join(f"import {n}" for n in names)
    loaded = modules_after(code)
    assert "textual" not in loaded
    assert "lora_tui" not in loaded


def test_profile_check_and_cli_start_without_torch():
    loaded = modules_after(
        "import lora_core.cli, lora_core.profile_io, lora_core.checks, "
        "lora_core.checks.report, lora_core.events, lora_core.models.loading")
    assert not [m for m in HEAVY if m in loaded]


def test_import_contracts_hold():
    """pyproject's import-linter contracts: the engine never imports the wizard or textual;
    each layer (cli > session > profile_load > checks > training > network > saving >
    dataset / models > profile > values) imports only those below it; no import cycles
    between the modules of a package; the wizard (lora_tui) reaches torch, diffusers,
    transformers or accelerate only through the function-level imports the contract lists."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_the_layers_contract_catches_an_upward_import():
    """The same layers, on the real graph with one import added where it must not be: a
    dataset module importing the checks."""
    import grimp

    # As the contract reads it: `if TYPE_CHECKING:` imports never run, so they cross no line.
    graph = grimp.build_graph("lora_core", exclude_type_checking_imports=True)
    layers = ["lora_core.checks", "lora_core.training", "lora_core.dataset"]
    assert graph.find_illegal_dependencies_for_layers(layers=layers) == set()
    graph.add_import(importer="lora_core.dataset.scan", imported="lora_core.checks.problem")
    assert graph.find_illegal_dependencies_for_layers(layers=layers)
