"""``gallery.lock``: the one exclusive lock of a gallery folder. Index writers and schema upgrades take turns
under it, across processes and across ``Gallery`` objects of one process (fcntl locks are per open file)."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

LOCK_NAME = "gallery.lock"


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the folder's lock for the ``with`` block (waits for another holder)."""
    with open(folder / LOCK_NAME, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
