"""Fixtures for the wizard tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tui.helpers import EXAMPLE_TRAIN


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A copy of the example training images (parent of "10_ohwx cube")."""
    target = tmp_path / "images"
    shutil.copytree(EXAMPLE_TRAIN, target)
    return target
