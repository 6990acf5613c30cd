"""The errors facesearch raises for a reason its user can act on: one hierarchy under :class:`FacesearchError`.

Each class carries the exit status the CLI ends with (``exit_code``), and the HTTP status and short
machine-readable word the service answers with (``http_status``, ``status``): the CLI and the service map an
error by its type, never by its module or its message. Anything that is not a ``FacesearchError`` (a plain
``ValueError`` or ``KeyError`` included) is a bug: the CLI keeps its traceback in a crash log, the service
answers 500.

A message says what is wrong in the library's terms. Where it is about one parameter, ``param`` names it (its
Python name) and each front end spells it its own way before the message: the CLI as its option
(``--conv-width 5: ...``), the API as its field (``conv_width 5: ...``). So library code never names a CLI flag.

    FacesearchError          exit 1   400 refused
    ├── BadInput             exit 1   422 invalid_request   (also a ValueError)
    ├── NotFound             exit 1   404 not_found
    ├── Conflict             exit 1   409 conflict
    ├── ModelMismatch        exit 1   409 model_mismatch
    ├── ReadOnly             exit 1   403 read_only_gallery
    └── Unavailable          exit 1   503 unavailable

The modules' own errors join it where they are defined (``GalleryError``, ``CheckpointError``, ``ImageError``,
``ClusterError``, ``ExplainError``, ...), some as members of two branches (``IdentityNotFound`` is a
``GalleryError`` and a ``NotFound``).
"""

from __future__ import annotations

from typing import Callable


class FacesearchError(Exception):
    """A failure its user can act on; the message says what is wrong (and, where it helps, what to do)."""

    exit_code: int = 1  # what the CLI exits with
    http_status: int = 400  # what the service answers with
    status: str = "refused"  # the service's machine-readable word for it
    param: str | None = None  # the parameter the message is about (its Python name), if one

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.param} {message}" if self.param else message

    def describe(self, spell: Callable[[str], str] | None = None) -> str:
        """The message with its parameter spelled by ``spell`` (the CLI: the option's flag); no parameter: ``str``."""
        if self.param is None or spell is None:
            return str(self)
        return f"{spell(self.param)} {Exception.__str__(self)}"


class BadInput(FacesearchError, ValueError):
    """A value, file or setting given that cannot be used (a ``ValueError`` too, for callers that catch those)."""

    http_status = 422
    status = "invalid_request"


class NotFound(FacesearchError):
    """Something named (an identity, a face, a group) is not there."""

    http_status = 404
    status = "not_found"


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
