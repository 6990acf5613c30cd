"""The Typer application, its sub-apps (one per noun), the options every command shares, and the one error path.

Command modules import these and decorate their functions onto them. Nothing heavy (torch, faiss,
sqlalchemy) is imported at module level anywhere under ``facesearch.cli``: ``facesearch --help`` must
stay fast.

Errors: a command calls :func:`fail` for a failure it detects itself; every other exception reaches
:class:`_Root`, which turns the expected ones (a ``FacesearchError``: a bad photo, gallery, checkpoint, option or
name; a file the system refused; see :func:`user_message`) into one line on stderr and the error's exit status
(``facesearch.errors``) — with ``--json``, also a JSON error object on stdout — and anything unexpected (a plain
``ValueError`` too) into a short message naming the log file that holds the traceback. A library error about one
parameter gets it spelled as the command's option (``--conv-width 5: ...``), and its remedy as a command line
(```facesearch gallery reembed --checkpoint NEW```: ``facesearch.cli.spelling``). A traceback on the terminal only with
``facesearch --debug`` (or ``FACESEARCH_LOG=debug``).

Text for a terminal: every file name, name or message a command prints passes through :func:`printable`, so a
name holding a newline or an escape sequence can neither forge an output line nor drive the terminal (JSON output
escapes them itself). Numbers: every float option refuses nan and infinities as a usage error (exit status 2).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Callable, NoReturn, Optional

import typer
import typer.core

from facesearch.cli.spelling import command_of, flag_speller, remedy_speller
from facesearch.errors import FacesearchError, RemedySpeller

# -- options every command spells the same way -------------------------------------------------------------

# The model a command uses, where a default model exists: given → the gallery's recorded one → the base model.
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", envvar="FACESEARCH_CHECKPOINT",
    help='Checkpoint file or training run folder; "base" is the model shipped with facesearch. '
         "(default: the gallery's model, else base)")]
# Where there is no default model to fall back on (re-embedding a gallery, a CIFAR-10 model).
RequiredCheckpoint = Annotated[Path, typer.Option(
    "--checkpoint", "-c", envvar="FACESEARCH_CHECKPOINT",
    help='Checkpoint file or training run folder ("base": the model shipped with facesearch).')]
GalleryDir = Annotated[Path, typer.Option(
    "--gallery", "-g", envvar="FACESEARCH_GALLERY", help="Gallery folder (index, crops and, by default, gallery.db).")]
DbUrl = Annotated[Optional[str], typer.Option(
    "--db", envvar="FACESEARCH_DB",
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db (default: SQLite gallery.db in the gallery folder).")]
Device = Annotated[str, typer.Option(help='"auto" (CUDA when available), "cuda", "cuda:1" or "cpu".')]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result (or the error) as JSON on stdout.")]

DEFAULT_GALLERY = Path("gallery")


# -- text for a terminal ---------------------------------------------------------------------------------------

# C0 and C1 control characters (newline, carriage return, escape, bell, ...), DEL, the Unicode line and paragraph
# separators and the bidirectional controls that reorder what a terminal shows.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value) -> str:
    """``str(value)`` safe to print on a terminal: control characters shown as escapes (``\\n``, ``\\x1b``,
    ``\\u202e``), so that a file or identity name cannot forge an output line, set the terminal's title or reorder
    the text around it. The one helper for every name a command prints (JSON output needs none)."""
    return _UNPRINTABLE.sub(_escape, str(value))


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


# How the running command spells a library remedy (set by the root group before a command runs).
REMEDY_SPELLER: dict[str, RemedySpeller] = {}


class _PrintableFormatter(logging.Formatter):
    """Log lines with their message made ``printable`` (a traceback below it keeps its lines), and the remedy
    a library log record carries (``extra={"remedy": Remedy}``) spelled as the command line that does it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        remedy, spell = getattr(record, "remedy", None), REMEDY_SPELLER.get("command")
        if remedy is not None and spell is not None:
            line = f"{line} ({spell(remedy)})"
        return printable(line)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(value: str | None) -> int:
    """The logging level ``FACESEARCH_LOG`` names (any case); unset or empty: warning.

    Raises:
        CommandError: not one of ``LOG_LEVELS`` (a usage error, exit status 2).
    """
    if value is None or not value.strip():
        return logging.WARNING
    if value.strip().lower() not in LOG_LEVELS:
        raise CommandError(f"FACESEARCH_LOG={printable(repr(value))}: not a log level; use one of "
                           f"{', '.join(LOG_LEVELS)} (unset or empty: warning)", code=2)
    return getattr(logging, value.strip().upper())


def setup_logging() -> None:
    """Log records of the level ``FACESEARCH_LOG`` names to stderr, each message ``printable``."""
    level = log_level(os.environ.get("FACESEARCH_LOG"))  # checked on every run, configured once a process
    root = logging.getLogger()
    if not root.handlers:  # (a test runner's own handlers and levels are left as they are)
        handler = logging.StreamHandler()
        handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)


# -- numbers ---------------------------------------------------------------------------------------------------


def _finite_floats(command) -> None:
    """Every option and argument of ``command`` and its sub-commands refuses nan and infinities where it takes a
    float, as a usage error (exit status 2) like any other bad value: typer lets them through, to fail later with
    exit status 1, or not at all."""
    for param in command.params:
        param.callback = _refusing_non_finite(param.callback)
    for sub in getattr(command, "commands", {}).values():
        _finite_floats(sub)


def _refusing_non_finite(callback):
    def check(ctx, param, value):
        values = value if isinstance(value, (list, tuple)) else (value,)
        bad = next((v for v in values if isinstance(v, float) and not math.isfinite(v)), None)
        if bad is not None:
            raise typer.BadParameter(f"{bad} is not a finite number.", ctx=ctx, param=param)
        return callback(ctx, param, value) if callback is not None else value

    return check


# -- the one failure helper and the one error translation ------------------------------------------------------


class CommandError(FacesearchError):
    """A failure a command detected itself: the message for the user and the exit status."""

    def __init__(self, message: str, code: int = 1, **about):  # about: ``param``, ``remedy`` (FacesearchError's)
        super().__init__(message, **about)
        self.exit_code = code


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command: ``error: MESSAGE`` on stderr (a JSON error under ``--json``), exit status ``code``."""
    raise CommandError(message, code)


def user_message(error: BaseException, flag: Callable[[str], str] | None = None,
                 remedy: RemedySpeller = str) -> tuple[str, int] | None:
    """The one- or two-line message for an expected failure and the exit status, or None for a bug.

    Expected: a ``FacesearchError`` (its parameter, if it names one, spelled by ``flag``: the command's option; its
    remedies by ``remedy``: command lines), a file the system refused (``OSError``), a database that cannot be
    reached or read. Anything else, a plain ``ValueError`` or ``KeyError`` included, is a bug.
    """
    if isinstance(error, FacesearchError):
        return error.describe(flag, remedy), error.exit_code
    if isinstance(error, OSError):
        name = error.filename or ""
        reason = error.strerror or str(error)
        return (f"{name}: {reason}" if name and str(name) not in reason else reason), 1
    db_error = _database_error(error)
    if db_error is not None:
        return db_error.describe(flag, remedy), 1
    return None


def _database_error(error: BaseException) -> FacesearchError | None:
    """SQLAlchemy's errors for a database that cannot be reached, read or written, as the library describes them."""
    exc = sys.modules.get("sqlalchemy.exc")  # not imported: no database was opened, the error is not its
    if exc is None or not isinstance(error, exc.SQLAlchemyError):
        return None
    from facesearch.gallery.db import describe_database_error

    return describe_database_error(error)


def _debugging(ctx) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("FACESEARCH_LOG", "").strip().lower() == "debug"


def _wants_json(args: list[str]) -> bool:
    return "--json" in args


def _report(message: str, code: int, as_json: bool, shown: bool = False) -> NoReturn:
    if not shown:
        typer.echo(f"error: {printable(message)}", err=True)
    if as_json:
        typer.echo(json.dumps({"error": {"message": message, "exit_code": code}}))
    raise typer.Exit(code=code)


def _write_crash_log(error: BaseException, args: list[str]) -> Path | None:
    """The full traceback of an unexpected error, kept for a bug report."""
    text = "".join(traceback.format_exception(error))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in (Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "facesearch",
                   Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"facesearch-error-{stamp}-{os.getpid()}.log"
            path.write_text(f"facesearch {' '.join(args)}\n\n{text}")
            return path
        except OSError:
            continue
    return None


class _Root(typer.core.TyperGroup):
    """The root command group: every command's exceptions pass through :meth:`invoke`; every float parameter
    of every command refuses nan and infinities (:func:`_finite_floats`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _finite_floats(self)

    def invoke(self, ctx):
        args = [*ctx._protected_args, *ctx.args]
        as_json = _wants_json(args)
        command = command_of(ctx.command, args)
        spell_remedy = REMEDY_SPELLER["command"] = remedy_speller(ctx.command, command)  # log records' too
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as e:  # click's usage errors: bad or missing options and arguments
            if not as_json:
                raise
            e.show()
            _report(e.format_message(), getattr(e, "exit_code", 2), as_json, shown=True)
        except KeyboardInterrupt:
            _report("interrupted", 130, as_json)
        except Exception as e:
            if _debugging(ctx):
                raise
            expected = user_message(e, flag_speller(command), spell_remedy)
            if expected is not None:
                _report(*expected, as_json)
            log = _write_crash_log(e, args)
            where = f"the traceback is in {log}" if log else "the traceback could not be saved"
            _report(f"unexpected {type(e).__name__}: {e} ({where}; rerun with `facesearch --debug ...` to see it)",
                    1, as_json)


# -- progress ----------------------------------------------------------------------------------------------


QUIET = {"on": False}  # set by `facesearch --quiet`: no progress output at all


class Progress:
    """Progress of long work on stderr: a bar on a terminal, and when stderr is a log file (a bar would print
    nothing until the end) a plain line at most every ``LOG_EVERY`` seconds: done/total, rate, time left.
    Start it when the total is known; ``update`` takes the number of items just finished; usable as a context
    manager. ``facesearch --quiet`` silences it.
    """

    LOG_EVERY = 10.0  # seconds between progress lines in a log

    def __init__(self, label: str, total: int | None = None, enabled: bool = True):
        self.label, self.enabled = label, enabled and not QUIET["on"]
        self.total, self.done, self.bar = 0, 0, None
        self._last_line = 0.0
        if total is not None:
            self.start(total)

    def start(self, total: int) -> None:
        if not self.enabled or not total:
            return
        self.total, self._t0 = total, time.monotonic()
        if sys.stderr.isatty():
            self.bar = typer.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        else:
            self._last_line = self._t0

    def update(self, n: int, label: str | None = None) -> None:
        if not self.total:
            return
        self.done += n
        if label is not None:
            self.label = label
        if self.bar is not None:
            self.bar.label = self.label
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.LOG_EVERY or self.done >= self.total:
            self._last_line = now
            elapsed = max(now - self._t0, 1e-9)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = "done" if self.done >= self.total else f"about {left:.0f} s left"
            typer.echo(f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f} %, "
                       f"{elapsed:.0f} s, {rate:.1f}/s, {eta})", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the application -------------------------------------------------------------------------------------

app = typer.Typer(
    name="facesearch",
    cls=_Root,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Face recognition trained on your own labelled photos: prepare, train, enroll, search, explain.",
)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of any error.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")] = False,
) -> None:
    QUIET["on"] = quiet
    setup_logging()
    # Idle OpenMP threads sleep instead of spinning: on a small shared CPU the default busy-wait made one MTCNN
    # pass take 10 s instead of 0.6 s. Set here, once, before any command imports torch or faiss.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


cifar10_app = typer.Typer(no_args_is_help=True, help="Train and inspect a VGG16 CIFAR-10 classifier.")
identities_app = typer.Typer(no_args_is_help=True, help="List, show, rename, merge and remove identities.")
gallery_app = typer.Typer(no_args_is_help=True, help="Gallery statistics, consistency check, rebuild, re-embed.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
evaluate_app = typer.Typer(no_args_is_help=True, help="Measure accuracy: LFW pairs, open-set, closed-set.")
clusters_app = typer.Typer(no_args_is_help=True, help="Name, merge, split and edit the groups of `facesearch cluster`.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of `facesearch serve`: create, list, revoke.")

app.add_typer(cifar10_app, name="cifar10")
app.add_typer(identities_app, name="identities")
app.add_typer(gallery_app, name="gallery")
app.add_typer(db_app, name="db")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(clusters_app, name="clusters")
app.add_typer(keys_app, name="keys")
