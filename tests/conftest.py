"""Shared fixtures: the bundled sample photos, and settings that keep tests fast on a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"


@pytest.fixture(scope="session")
def sample_photos() -> Path:
    """``sample/photos/<identity>/*.jpg``: 20 CelebA people x 16 uncropped photos."""
    return SAMPLE / "photos"


@pytest.fixture(scope="session")
def sample_orl() -> Path:
    """``sample/orl/<sN>/*.pgm``: 3 ORL people x 10 greyscale photos."""
    return SAMPLE / "orl"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
