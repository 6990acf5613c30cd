"""Shared fixtures: the bundled sample photos, a tiny checkpoint, and settings that keep tests fast on a
2-core CPU. The plain builders they use (and tests call) are in builders.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="session")
def sample_photos() -> Path:
    """``sample/photos/<identity>/*.jpg``: 20 CelebA people x 16 uncropped photos."""
    return SAMPLE / "photos"


@pytest.fixture(scope="session")
def sample_orl() -> Path:
    """``sample/orl/<sN>/*.pgm``: 3 ORL people x 10 greyscale photos."""
    return SAMPLE / "orl"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight VGG16 checkpoint (``builders.tiny_checkpoint``: 32 px, fc7 64 wide, 3 classes)."""
    from builders import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def chromium():
    """The system's Chromium driven by Playwright (Debian's package; Playwright's own browser download is not
    used). Without one the tests that need it skip and say why, unless FACESEARCH_REQUIRE_BROWSER=1 (CI), where
    a missing browser fails the run."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = os.environ.get("FACESEARCH_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None or not Path(path).exists():
        message = f"no system Chromium ({', '.join(BROWSERS)} not on PATH; set FACESEARCH_CHROMIUM)"
        if os.environ.get("FACESEARCH_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
