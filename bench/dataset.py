"""Generated datasets for the benchmark: written once, deterministic, no download.

* :func:`ensure_train_dataset`: ``<root>/train/10_bench/`` with 20 images (64×64 by default)
  and a caption file each, in sd-scripts' ``<repeats>_<name>`` folder layout.
* :func:`ensure_check_dataset`: ``<root>/check-1000/10_bench/`` with 1,000 small PNGs and
  captions, for timing ``lora-train check`` (which must read image headers only).

The images are smooth colour fields with a little seeded noise, so the VAE sees varied input
and PNG files stay small. A dataset is built in a temporary folder and renamed into place, so
an interrupted build is never reused. This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.atomic import atomic_folder

TRAIN_IMAGES = 20
CHECK_IMAGES = 1000
SUBSET = "10_bench"  # 10 repeats of the concept "bench"
SEED = 7

WORDS = ("red", "blue", "green", "cube", "sphere", "sky", "grass", "photo", "light", "dark",
         "tree", "water", "stone", "small", "large", "bright")


def caption_for(index: int) -> str:
    """A stable, varied caption: the trigger, then three tags picked from ``WORDS``."""
    tags = [WORDS[(index * k + k) % len(WORDS)] for k in (1, 3, 7)]
    return ", ".join(["bench", *tags])


def write_images(folder: Path, count: int, size_px: int) -> None:
    """``count`` PNGs of ``size_px``² and their captions into ``folder`` (created)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    ramp = np.linspace(0.0, 1.0, size_px, dtype=np.float32)
    for i in range(count):
        base = rng.uniform(0, 255, size=3).astype(np.float32)
        tilt = rng.uniform(-80, 80, size=3).astype(np.float32)
        field = base + tilt * (ramp[None, :, None] + ramp[:, None, None]) / 2
        field += rng.normal(0, 8, size=(size_px, size_px, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")
        image.save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(caption_for(i), encoding="utf-8")


def _ensure(final: Path, count: int, size_px: int) -> Path:
    marker = final / ".complete"
    if marker.is_file():
        return final

    def write(tmp: Path) -> None:
        write_images(tmp / SUBSET, count, size_px)
        (tmp / ".complete").write_text(f"{count} images of {size_px} px\n", encoding="utf-8")

    atomic_folder(final, write, replace=True)  # a leftover without the marker is replaced
    return final


def ensure_train_dataset(root: Path, size_px: int = 64, count: int = TRAIN_IMAGES) -> Path:
    """The training dataset folder (``train_data_dir``): ``count`` images in ``10_bench``."""
    return _ensure(Path(root) / f"train-{count}x{size_px}", count, size_px)


def ensure_check_dataset(root: Path, count: int = CHECK_IMAGES, size_px: int = 64) -> Path:
    """A large dataset for ``lora-train check`` timing (written once, then reused)."""
    return _ensure(Path(root) / f"check-{count}x{size_px}", count, size_px)
