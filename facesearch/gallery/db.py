"""Database plumbing: engines (SQLite in WAL mode, or PostgreSQL by URL) and Alembic run from code.

The Alembic scripts live in the top-level ``migrations/`` folder of a checkout and ship inside the wheel
as ``facesearch.migrations``; ``alembic_config`` points Alembic at that package's folder, so upgrades
work from an installed package with no ``alembic.ini``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from facesearch.errors import Remedy
from facesearch.gallery.records import GalleryError

logger = logging.getLogger(__name__)

DB_NAME = "gallery.db"
ENV_VAR = "FACESEARCH_DB"
SQLITE_BUSY_TIMEOUT_MS = 60_000  # writers queue behind each other instead of failing


def default_url(folder: str | os.PathLike) -> str:
    """The SQLite database inside a gallery folder."""
    return f"sqlite:///{Path(folder).resolve() / DB_NAME}"


def resolve_url(folder: str | os.PathLike, url: str | None = None) -> str:
    """``url`` when given, else ``$FACESEARCH_DB``, else the gallery folder's own SQLite file."""
    return url or os.environ.get(ENV_VAR) or default_url(folder)


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine.url if isinstance(url_or_engine, Engine) else make_url(url_or_engine)
    return url.get_backend_name() == "sqlite"


def masked(url: str | Engine) -> str:
    """The URL with its password hidden, for messages."""
    url = url.url if isinstance(url, Engine) else make_url(url)
    return url.render_as_string(hide_password=True)


def where(url: str | Engine) -> str:
    """The database as a message names it: a SQLite file's path, else the URL without its password."""
    url = url.url if isinstance(url, Engine) else make_url(url)
    path = sqlite_path(url.render_as_string(hide_password=False))
    return str(path) if path is not None else url.render_as_string(hide_password=True)


def describe_database_error(error: BaseException) -> GalleryError:
    """A user's message for a SQLAlchemy error, as an error to raise or describe: which database (every engine of
    ``create_engine`` names it on its errors), what is wrong with it and the way out."""
    text = (str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__])[0]
    low = text.lower()
    name = getattr(error, "database", None)
    db_name = f"the gallery database {name}" if name else "the gallery database"
    if "readonly" in low or "read-only" in low:
        return GalleryError(f"{db_name} is read-only ({text}): this command writes to it; use a writable copy")
    if "not a database" in low or "malformed" in low or "disk image" in low:
        return GalleryError(f"{db_name} is damaged ({text}): restore it from a backup, or enroll again into a new "
                            "gallery")
    if "disk i/o" in low or "disk is full" in low or "no space" in low:
        return GalleryError(f"{db_name}: its disk is full, or failed to read or write it ({text}): free space on that "
                            "disk (or check it), then try again")
    if "unable to open" in low:
        return GalleryError(f"cannot open {db_name} ({text}): check that the folder exists and is readable")
    if "locked" in low or "busy" in low:
        return GalleryError(f"{db_name} is busy ({text}): another facesearch process holds it; try again")
    if "connect" in low or "connection" in low or "timeout" in low or "resolve host" in low:
        return GalleryError(f"cannot reach {db_name} ({text}): check the database URL and that the server runs",
                            remedy=Remedy.give("url"))
    return GalleryError(f"database error in {name or 'the gallery database'}: {text}")


def create_engine(url: str, read_only: bool = False) -> Engine:
    """An engine for a gallery database; SQLite gets WAL, foreign keys and a long busy timeout.

    ``read_only``: SQLite is opened with ``mode=ro`` (and ``query_only``), nothing is ever written, not even
    the WAL switch; on a read-only medium, where SQLite cannot create its shared-memory file, it is opened
    ``immutable``. Another database is opened as given (its server's permissions decide).
    """
    if not is_sqlite(url):
        return _named(sa.create_engine(url, pool_pre_ping=True), url)
    if read_only:
        engine = _read_only_sqlite(url, immutable=False)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")
        except sa.exc.OperationalError as e:
            if not _needs_immutable(e, sqlite_path(url)):
                raise
            engine.dispose()
            engine = _read_only_sqlite(url, immutable=True)
        return engine
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return _named(engine, url)


def _named(engine: Engine, url: str) -> Engine:
    """Every error of ``engine`` carries ``.database``: the database it came from, for the user's message."""
    event.listen(engine, "handle_error", functools.partial(_name_database, where(url)))
    return engine


def _name_database(name: str, ctx) -> None:
    if ctx.sqlalchemy_exception is not None:
        ctx.sqlalchemy_exception.database = name


def _needs_immutable(error: sa.exc.OperationalError, path: Path | None) -> bool:
    """Whether a read-only open failed only for want of SQLite's shared-memory file, which a WAL database needs and
    SQLite could not create: the folder is not writable (a read-only mount, another user's gallery), or its disk
    is full. Reading the file ``immutable`` is then exact, as long as no write-ahead log holds commits that are
    not in the file yet (a writer elsewhere): such a database is not opened this way."""
    text = str(error.orig).lower()
    if not ("unable to open" in text or "readonly" in text or "disk i/o" in text):
        return False
    wal = path.with_name(path.name + "-wal") if path is not None else None
    return wal is None or not wal.exists() or wal.stat().st_size == 0


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None: another database, or in memory)."""
    from urllib.parse import unquote

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") == "true" and parsed.database.startswith("file:"):  # a read-only engine's URL
        return Path(unquote(parsed.database[len("file:"):]))
    return Path(parsed.database)


def _read_only_sqlite(url: str, immutable: bool) -> Engine:
    from urllib.parse import quote

    path = sqlite_path(url)
    flags = "immutable=1" if immutable else "mode=ro"
    engine = sa.create_engine(f"sqlite:///file:{quote(str(path.resolve()))}?{flags}&uri=true",
                              connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_read_only_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    if immutable:
        logger.info("%s opened immutable: SQLite cannot create its shared-memory file beside it", path)
    return _named(engine, url)


def _sqlite_read_only_on_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (so SAVEPOINT and transactional DDL work):
    # https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers begin IMMEDIATE: they take the write lock up front (waiting up to the busy timeout) instead
    # of failing when a read transaction has to be upgraded after another writer committed.
    conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", ""))


def writer(engine: Engine) -> Engine:
    """The same engine, for read-write transactions (BEGIN IMMEDIATE on SQLite)."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction whose statements all see one snapshot of the database.

    SQLite in WAL mode gives that to any transaction; PostgreSQL needs REPEATABLE READ (its default,
    READ COMMITTED, takes a new snapshot per statement).
    """
    options = {} if is_sqlite(engine) else {"isolation_level": "REPEATABLE READ"}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


# -- Alembic ----------------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/``: top-level ``migrations/`` in a checkout,
    ``facesearch/migrations/`` in an installed wheel (both import as ``facesearch.migrations``)."""
    import facesearch.migrations

    return Path(facesearch.migrations.__file__).resolve().parent


def alembic_config(connection: Connection | None = None):
    """An Alembic ``Config`` built in code; ``env.py`` runs on ``connection`` when one is given."""
    from alembic.config import Config

    cfg = Config(stdout=io.StringIO())  # Alembic prints progress; the library does not
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: empty, no schema yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


GALLERY_TABLES = ("gallery_state", "faces", "identities")  # what a facesearch schema has at every revision


def checked_revision(engine: Engine) -> str | None:
    """``current_revision``, refusing (GalleryError) a database this facesearch cannot upgrade or read: one a newer
    facesearch wrote (a revision it does not know), or one with gallery tables and no revision at all. Nothing is
    changed either way."""
    from alembic.script import ScriptDirectory

    from facesearch import __version__

    current = current_revision(engine)
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if current is None:
        tables = sorted(set(GALLERY_TABLES) & set(sa.inspect(engine).get_table_names()))
        if tables:
            raise GalleryError(
                f"{where(engine)}: holds gallery tables ({', '.join(tables)}) but no schema revision (the "
                "alembic_version row is missing): the database is damaged or was not made by facesearch; nothing "
                "was changed. Restore it from a backup; if you know which revision its tables are at, record it",
                remedy=Remedy.run("db.stamp", revision="REVISION"))
        return None
    if current not in {rev.revision for rev in script.walk_revisions()}:
        raise GalleryError(
            f"{where(engine)}: this gallery was written by a newer facesearch (schema revision {current!r}; "
            f"facesearch {__version__} knows revisions up to {head!r}); nothing was changed. Open it with that "
            "facesearch, or upgrade this one (pip install -U facesearch)")
    return current


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, in one transaction."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    logger.info("database %s upgraded to %s", masked(engine), revision)


def stamp(engine: Engine, revision: str) -> None:
    """Record that the database is at ``revision`` without changing its tables (recovery of a lost revision row)."""
    from alembic import command

    with engine.begin() as conn:
        command.stamp(alembic_config(conn), revision)
    logger.info("database %s stamped %s", masked(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` ("base": drop every gallery table)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
    logger.info("database %s downgraded to %s", masked(engine), revision)


def check(engine: Engine) -> None:
    """Raise ``alembic.util.exc.AutogenerateDiffsDetected`` when the models and the migrations disagree."""
    from alembic import command

    with engine.begin() as conn:
        command.check(alembic_config(conn))
