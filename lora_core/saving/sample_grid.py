"""The sample grid: every sample image of a run in one picture, ``<output_name>_grid.png``.

One row per prompt (its index in the prompt file), one column per sampling point (a step),
each column labelled with its epoch/step and, when validation measured one there, the
validation loss; rows are labelled with the start of their prompt. It is built from the run
folder's ``events.jsonl`` (``sample_saved`` and ``validation_measured``), so the trainer,
``lora-train grid RUN_FOLDER`` and a resumed run all draw the same grid. A resumed run drops
what its killed attempt sampled after the state it resumed from: those steps run again.

PIL only (no torch): ``lora-train grid`` and the wizard can call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lora_core import output_names as names
from lora_core.atomic import atomic_write
from lora_core.events import (
    RunResumed,
    SampleSaved,
    ValidationMeasured,
    read_events,
)

SAMPLE_FOLDER = "sample"   # as training.sampling.SAMPLE_FOLDER (that module imports torch)
CELL_PX = 128              # the longer side of each image in the grid
HEADER_PX = 36             # the column labels above the images
LABEL_PX = 160             # the prompt labels left of the images
_BACKGROUND = (24, 24, 24)
_TEXT = (230, 230, 230)
_MISSING = (64, 64, 64)


@dataclass
class Column:
    step: int
    epoch: int | None
    loss: float | None = None
    images: dict[int, Path] = field(default_factory=dict)  # prompt index -> file

    @property
    def label(self) -> str:
        where = f"e{self.epoch} s{self.step}" if self.epoch else f"step {self.step}"
        return where if self.loss is None else f"{where}\nval {self.loss:.4f}"


@dataclass
class Grid:
    path: Path
    rows: int
    columns: int
    width_px: int
    height_px: int


def grid_path(output_dir: Path, output_name: str) -> Path:
    return Path(output_dir) / SAMPLE_FOLDER / names.grid_file_name(output_name)


def grid_size_px(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) of a grid of ``rows`` prompts and ``columns`` sampling points."""
    return LABEL_PX + columns * CELL_PX, HEADER_PX + rows * CELL_PX


def collect(events_path: Path) -> tuple[list[Column], dict[int, str]]:
    """The sampling points (in step order) and prompts (index -> text) of a run's events."""
    columns: dict[int, Column] = {}
    losses: dict[int, float] = {}
    prompts: dict[int, str] = {}
    for event in read_events(events_path):
        if isinstance(event, RunResumed):
            # The killed attempt's later points are made again by the resumed run.
            columns = {s: c for s, c in columns.items() if s <= event.step}
            losses = {s: v for s, v in losses.items() if s <= event.step}
        elif isinstance(event, SampleSaved):
            column = columns.setdefault(event.step, Column(event.step, event.epoch))
            if event.epoch is not None:
                column.epoch = event.epoch
            column.images[event.prompt_index] = Path(event.path)
            prompts[event.prompt_index] = event.prompt
        elif isinstance(event, ValidationMeasured):
            losses[event.step] = event.loss
    for step, column in columns.items():
        column.loss = losses.get(step)
    return [columns[s] for s in sorted(columns)], prompts


def draw_grid(columns: list[Column], prompts: dict[int, str]):
    """The grid as a PIL image (None when there is nothing to draw)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = sorted({i for c in columns for i in c.images} | set(prompts))
    if not columns or not rows:
        return None
    width, height = grid_size_px(len(rows), len(columns))
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for x_index, column in enumerate(columns):
        x = LABEL_PX + x_index * CELL_PX
        draw.multiline_text((x + 4, 2), column.label, fill=_TEXT, font=font, spacing=2)
        for y_index, row in enumerate(rows):
            y = HEADER_PX + y_index * CELL_PX
            _paste(grid, draw, column.images.get(row), x, y)
    for y_index, row in enumerate(rows):
        y = HEADER_PX + y_index * CELL_PX
        text = prompts.get(row, "")
        lines = [text[i:i + 24] for i in range(0, min(len(text), 24 * 6), 24)] or [""]
        draw.multiline_text((4, y + 4), f"#{row}\n" + "\n".join(lines), fill=_TEXT,
                            font=font, spacing=2)
    return grid


def _paste(grid, draw, path: Path | None, x: int, y: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        if path is None:
            raise FileNotFoundError
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((CELL_PX, CELL_PX))
            grid.paste(image, (x + (CELL_PX - image.width) // 2,
                               y + (CELL_PX - image.height) // 2))
    except (OSError, UnidentifiedImageError):
        draw.rectangle((x + 2, y + 2, x + CELL_PX - 3, y + CELL_PX - 3), fill=_MISSING)


def write_grid(events_path: Path, path: Path) -> Grid | None:
    """Draw the grid of a run's events and write it (atomically) to ``path``."""
    columns, prompts = collect(events_path)
    image = draw_grid(columns, prompts)
    if image is None:
        return None
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    return Grid(Path(path), (image.height - HEADER_PX) // CELL_PX, len(columns), image.width,
                image.height)


def write_run_grid(run_dir: Path, output_dir: Path, output_name: str) -> Grid | None:
    """The trainer's call: the grid of the run folder ``run_dir`` beside its samples."""
    return write_grid(Path(run_dir) / "events.jsonl", grid_path(output_dir, output_name))
