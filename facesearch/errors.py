"""The errors facesearch raises for a reason its user can act on: one hierarchy under :class:`FacesearchError`.

Each class carries the exit status the CLI ends with (``exit_code``), and the HTTP status and short
machine-readable word the service answers with (``http_status``, ``status``): the CLI and the service map an
error by its type, never by its module or its message. Anything that is not a ``FacesearchError`` (a plain
``ValueError`` or ``KeyError`` included) is a bug: the CLI keeps its traceback in a crash log, the service
answers 500.

A message says what is wrong in the library's terms. Where it is about one parameter, ``param`` names it (its
Python name) and each front end spells it its own way before the message: the CLI as its option
(``--conv-width 5: ...``), the API as its field (``conv_width 5: ...``). What to do about it, where the message does
not say it in words alone, is a :class:`Remedy`: a library operation to run (``reembed``, ``check``,
``keys.create``, ...) and the parameters to give it, or the parameters to give the operation that failed; each
front end spells it after the message, in parentheses: the CLI as a command line (``facesearch gallery reembed
--checkpoint NEW``) or an option (``--db``), the service in its own words; ``str`` in the library's
(``reembed: checkpoint=NEW``). So library code never names a CLI flag or a ``facesearch`` command.

    FacesearchError          exit 1   400 refused
    ├── BadInput             exit 1   422 invalid_request   (also a ValueError)
    ├── NotFound             exit 1   404 not_found
    │   └── MissingFile                              (also a FileNotFoundError)
    ├── Conflict             exit 1   409 conflict
    ├── ModelMismatch        exit 1   409 model_mismatch
    ├── ReadOnly             exit 1   403 read_only_gallery
    └── Unavailable          exit 1   503 unavailable

The modules' own errors join it where they are defined (``GalleryError``, ``CheckpointError``, ``ImageError``,
``ClusterError``, ``ExplainError``, ...), some as members of two branches (``IdentityNotFound`` is a
``GalleryError`` and a ``NotFound``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

# The library operations a remedy can name: a function or method of the library, each of which every front end
# can spell (the CLI: a command; tests/test_errors.py checks that the CLI's table has them all).
Action = Literal["prepare", "train", "enroll", "reembed", "check", "rebuild", "use_store", "calibrate", "cluster",
                 "identities.rename", "identities.merge", "identities.remove", "db.upgrade", "db.stamp",
                 "keys.create"]


@dataclass(frozen=True)
class Remedy:
    """What its user can do about an error, in the library's terms: run ``action`` with ``args``, or (no action)
    give the operation that failed ``args``. ``args``: (parameter, value) pairs, the parameter by its Python name
    and the value to give (None: the parameter alone). Build one with :meth:`run` or :meth:`give`."""

    action: Action | None = None
    args: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def run(cls, action: Action, **args: object) -> "Remedy":
        """Run ``action`` with these arguments (``Remedy.run("reembed", checkpoint="NEW")``)."""
        return cls(action, tuple((k, None if v is None else str(v)) for k, v in args.items()))

    @classmethod
    def give(cls, *params: str, **args: object) -> "Remedy":
        """Give these parameters (``Remedy.give("db_url")``) or values (``Remedy.give(fc7_width=512)``)."""
        return cls(None, (*((p, None) for p in params), *((k, str(v)) for k, v in args.items())))

    def __str__(self) -> str:
        args = ", ".join(name if value is None else f"{name}={value}" for name, value in self.args)
        return f"{self.action}: {args}" if self.action and args else self.action or args


RemedySpeller = Callable[[Remedy], str]


class FacesearchError(Exception):
    """A failure its user can act on; the message says what is wrong (and, where it helps, what to do); ``remedy``:
    one or more ways out (alternatives), spelled by each front end after the message."""

    exit_code: int = 1  # what the CLI exits with
    http_status: int = 400  # what the service answers with
    status: str = "refused"  # the service's machine-readable word for it
    param: str | None = None  # the parameter the message is about (its Python name), if one
    remedies: tuple[Remedy, ...] = ()  # what to do about it, alternatives; each front end spells them

    def __init__(self, message: str = "", *, param: str | None = None,
                 remedy: Remedy | tuple[Remedy, ...] = ()):
        super().__init__(message)
        if param is not None:
            self.param = param
        if remedy:
            self.remedies = remedy if isinstance(remedy, tuple) else (remedy,)

    def __str__(self) -> str:
        return self.describe()

    def text(self) -> str:
        """The message alone: no parameter, no remedy."""
        return super().__str__()

    def describe(self, spell: Callable[[str], str] | None = None, remedy: RemedySpeller = str) -> str:
        """The message with its parameter spelled by ``spell`` (the CLI: the option's flag) and its remedies by
        ``remedy`` (the CLI: a command line), in parentheses after it; by default both in the library's terms."""
        message = self.text()
        if self.param is not None:
            message = f"{spell(self.param) if spell else self.param} {message}"
        if self.remedies:
            message = f"{message} ({' or '.join(remedy(r) for r in self.remedies)})"
        return message


class BadInput(FacesearchError, ValueError):
    """A value, file or setting given that cannot be used (a ``ValueError`` too, for callers that catch those)."""

    http_status = 422
    status = "invalid_request"


class NotFound(FacesearchError):
    """Something named (an identity, a face, a group) is not there."""

    http_status = 404
    status = "not_found"


class MissingFile(NotFound, FileNotFoundError):
    """A file or folder that is not there (a ``FileNotFoundError`` too, for callers that catch those)."""


class Conflict(FacesearchError):
    """The change clashes with what is there already (a name taken)."""

    http_status = 409
    status = "conflict"


class ModelMismatch(FacesearchError):
    """The model given is not the one the stored embeddings were made with."""

    http_status = 409
    status = "model_mismatch"


class ReadOnly(FacesearchError):
    """A change asked of something only readable (a read-only gallery)."""

    http_status = 403
    status = "read_only_gallery"


class Unavailable(FacesearchError):
    """What the work needs is not installed or not usable here (an optional package, a damaged index)."""

    http_status = 503
    status = "unavailable"
