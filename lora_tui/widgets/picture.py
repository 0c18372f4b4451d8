"""A picture drawn in the terminal with coloured half-height cells (two pixels per
character), which every colour terminal shows, SSH included: sample images and the sample
grid. PIL and rich_pixels are imported only when a picture is drawn, never at start-up."""

from __future__ import annotations

from pathlib import Path


def terminal_picture(path: Path | str, columns: int, pixel_rows: int):
    """``path`` scaled to fit ``columns`` x ``pixel_rows`` (aspect kept), as a renderable;
    OSError when it cannot be read."""
    from PIL import Image
    from rich_pixels import HalfcellRenderer, Pixels

    with Image.open(path) as image:
        image.thumbnail((columns, pixel_rows))
        return Pixels.from_image(image.convert("RGB"), renderer=HalfcellRenderer())
