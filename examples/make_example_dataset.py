"""Regenerate the example dataset in examples/dataset/ (already committed; run only to rebuild).

Simple drawn pictures with .txt captions: a `10_ohwx cube` training folder (trigger word
"ohwx", class "cube") in mixed aspect ratios, and a `1_cube` regularization folder. The
pictures are deterministic, so rebuilding gives the same files.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60),
          "yellow": (220, 200, 40), "purple": (130, 50, 160), "orange": (230, 130, 30)}
BACKGROUNDS = {"grass": (90, 150, 70), "sky": (150, 190, 235), "sand": (220, 200, 150),
               "night": (20, 20, 45)}


def draw(size: tuple[int, int], color: str, background: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", size, BACKGROUNDS[background])
    pen = ImageDraw.Draw(image)
    w, h = size
    side = min(w, h) // 2
    x, y = rng.randint(0, w - side), rng.randint(0, h - side)
    pen.rectangle([x, y, x + side, y + side], fill=COLORS[color], outline=(0, 0, 0), width=2)
    return image


def make(folder: Path, count: int, sizes: list[tuple[int, int]], caption_lead: str,
         seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        color = rng.choice(sorted(COLORS))
        background = rng.choice(sorted(BACKGROUNDS))
        draw(sizes[i % len(sizes)], color, background, rng).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"{caption_lead}, {color}, {background}\n",
                                             encoding="utf-8")


if __name__ == "__main__":
    make(HERE / "dataset" / "train" / "10_ohwx cube", 4, [(96, 96), (128, 96), (96, 128)],
         "ohwx cube", seed=1)
    make(HERE / "dataset" / "reg" / "1_cube", 6, [(96, 96)], "cube", seed=2)
