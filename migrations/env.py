"""Alembic environment for the gallery database.

Run from code (``facesearch.gallery.db.upgrade``, ``facesearch db upgrade``), which passes an open
connection in ``config.attributes["connection"]``. Without one (the ``alembic`` command line) the URL
comes from ``$FACESEARCH_DB``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from facesearch.gallery.models import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, kind, reflected, compare_to) -> bool:
    """face_vectors exists only where PostgreSQL has pgvector (migration 0004, models.VectorBase): not compared."""
    return not (kind == "table" and name == "face_vectors") and not (
        kind == "index" and getattr(getattr(obj, "table", None), "name", None) == "face_vectors")


def run_on(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ["FACESEARCH_DB"]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        run_on(conn)


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or os.environ["FACESEARCH_DB"],
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
