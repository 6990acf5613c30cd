"""Support for the gallery tests: database backends and a tiny random-weight checkpoint.

Backends: SQLite always, PostgreSQL when ``FACESEARCH_TEST_PG_URL`` is set.

Each PostgreSQL test gets a schema of its own (selected through ``search_path`` in the URL), dropped
afterwards. ``FACESEARCH_REQUIRE_PG=1`` (set by ``.ci/run``) turns a missing server into a failure.
"""

from __future__ import annotations

import os
import uuid

import pytest

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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

    base = pg_base_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def tiny_checkpoint(path, input_size: int = 32, fc_width: int = 64, seed: int = 0):
    """A random-weight VGG16 checkpoint small enough to run in milliseconds (pre-ReLU fc7, so no
    embedding is all zeros)."""
    import torch

    from facesearch.checkpoint import Preprocess, save_checkpoint
    from facesearch.models.vgg import VGG16, VGGConfig

    torch.manual_seed(seed)
    model = VGG16(VGGConfig(num_classes=3, input_size=input_size, fc_width=fc_width, embedding="pre_relu"))
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
