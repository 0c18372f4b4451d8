"""Shared pieces for end-to-end tests: running the real CLI, tiny datasets, file snapshots."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.toml"


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_core.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT),
                          env={**os.environ, **kwargs.pop("env", {})}, **kwargs)


def snapshot(folder: Path) -> dict[str, tuple[str, float]]:
    """Every file under folder with its content hash and mtime, to prove nothing changed."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_images(folder: Path, count: int, size=(64, 64), caption: str | None = "tok, thing"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i % 255, 90, 160)).save(folder / f"{i}.png")
        if caption is not None:
            (folder / f"{i}.txt").write_text(caption, encoding="utf-8")


@pytest.fixture
def tiny_profile(tmp_path):
    """A profile that trains a handful of steps on a two-image dataset: fast CLI tests."""

    def make(name: str = "tiny", epochs: int = 1, repeats: int = 1, **sections) -> Path:
        data_dir = tmp_path / f"data-{name}"
        make_images(data_dir / f"{repeats}_tok thing", 2)
        profile = {
            "profile_version": 1,
            "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
            "dataset": {"train_data_dir": str(data_dir), "resolution": 64,
                        "min_bucket_reso": 64, "max_bucket_reso": 64,
                        "max_data_loader_n_workers": 0},
            "network": {"network_dim": 4, "network_alpha": 2.0},
            "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3,
                          "lr_scheduler": "constant"},
            "training": {"max_train_epochs": epochs, "train_batch_size": 2,
                         "mixed_precision": "no", "seed": 1},
            "saving": {"output_dir": str(tmp_path / "out"), "output_name": name},
        }
        for section, values in sections.items():
            profile.setdefault(section, {}).update(values)
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(profile), encoding="utf-8")
        return path

    return make
