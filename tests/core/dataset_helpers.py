"""Builders for tiny on-disk datasets used by the dataset tests (PIL-generated, in tmp_path)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from PIL import Image

from lora_core.profile import SECTIONS, Profile
from lora_core.values import Resolution


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_image(path: Path, width: int = 64, height: int = 64, fmt: str | None = None,
               color: tuple[int, int, int] = (200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, format=fmt)
    return path


def make_folder(parent: Path, name: str, count: int, size: tuple[int, int] = (64, 64),
                captions: str | None = ".txt", stem: str = "img") -> Path:
    """``count`` PNG images named <stem>NN.png, each with a caption file (unless None)."""
    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    data = png_bytes(*size)
    for i in range(count):
        (folder / f"{stem}{i:02d}.png").write_bytes(data)
        if captions is not None:
            (folder / f"{stem}{i:02d}{captions}").write_text(f"tag{i}, common", encoding="utf-8")
    return folder


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its (size, mtime_ns): to prove nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def profile_for(train_dir: Path, reg_dir: Path | None = None, **overrides: object) -> Profile:
    """A Profile pointing at the dataset; overrides name fields of any section
    (``train_batch_size=2``)."""
    profile = Profile(base_dir=train_dir.parent)
    profile.dataset.train_data_dir = str(train_dir)
    profile.dataset.reg_data_dir = str(reg_dir) if reg_dir else ""
    profile.saving.output_dir = str(train_dir.parent / "out")
    profile.saving.output_name = "mylora"
    for key, value in overrides.items():
        owners = [name for name in SECTIONS
                  if key in {f.name for f in dataclasses.fields(SECTIONS[name])}]
        assert len(owners) == 1, f"unknown profile field {key}"
        if key == "resolution":  # the resolved form a loaded profile holds
            value = Resolution.parse(value)
        setattr(getattr(profile, owners[0]), key, value)
    return profile
