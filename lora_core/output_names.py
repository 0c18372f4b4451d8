"""The names of the files a run writes (sd-scripts' scheme, kohya-compat.md §7.1).

Torch-free, so the plan and ``lora-train check`` use the same names the writer uses.
"""

from __future__ import annotations

from pathlib import Path

EXTENSION = "safetensors"


def final_file_name(output_name: str) -> str:
    return f"{output_name}.{EXTENSION}"


def epoch_file_name(output_name: str, epoch: int) -> str:
    return f"{output_name}-{epoch:06d}.{EXTENSION}"


def step_file_name(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}.{EXTENSION}"


def interrupted_file_name(output_name: str) -> str:
    return f"{output_name}-interrupted.{EXTENSION}"


def best_file_name(output_name: str) -> str:
    """The saved file with the lowest validation loss so far (replaced as the run goes)."""
    return f"{output_name}-best.{EXTENSION}"


def grid_file_name(output_name: str) -> str:
    """The sample grid, written in the sample folder beside the sample images."""
    return f"{output_name}_grid.png"


def tag_summary_file_name(output_name: str) -> str:
    return f"{output_name}.txt"


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def names_in_use(output_dir: Path, output_name: str) -> bool:
    """Whether any file this output_name would produce already exists."""
    if not output_dir.is_dir():
        return False
    if any((output_dir / name).exists() for name in
           (final_file_name(output_name), tag_summary_file_name(output_name),
            f"sample/{grid_file_name(output_name)}")):
        return True
    return any(output_dir.glob(f"{_glob_escape(output_name)}-*.{EXTENSION}"))


def free_output_name(output_dir: Path, output_name: str) -> str:
    """``output_name``, or ``output_name_2``, ``_3``... when files of that name exist."""
    if not names_in_use(output_dir, output_name):
        return output_name
    n = 2
    while names_in_use(output_dir, f"{output_name}_{n}"):
        n += 1
    return f"{output_name}_{n}"


def glob_escape(text: str) -> str:
    """``text`` with the glob wildcards *, ? and [ made literal."""
    return _glob_escape(text)
