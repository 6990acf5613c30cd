"""How the service spells what the library says in its own terms (``facesearch.errors``): a remedy's operation
as the API's endpoint where the API offers it, else as work for the gallery's administrator (creating an API key,
re-embedding the gallery); parameters as the API's fields, which keep the library's names.
"""

from __future__ import annotations

from facesearch.errors import FacesearchError, Remedy

# The library operations the API offers -> their endpoints (the REST words: an identity is a subject).
ENDPOINTS = {
    "check": "GET /api/v1/gallery/check",
    "calibrate": "POST /api/v1/calibrate",
    "enroll": "POST /api/v1/subjects/{name}/faces",
    "identities.rename": "PATCH /api/v1/subjects/{name}",
    "identities.merge": "POST /api/v1/subjects/{name}/merge",
    "identities.remove": "DELETE /api/v1/subjects/{name}",
}


def spell(remedy: Remedy) -> str:
    """A remedy in the service's words: its endpoint, or the operation for the gallery's administrator."""
    if remedy.action in ENDPOINTS:
        return ENDPOINTS[remedy.action]
    if remedy.action is not None:
        return f"the gallery's administrator: {remedy}"
    return str(remedy)


def reason(error: Exception) -> str:
    """The error's message for a caller of the API or a reader of the pages, its remedies in the service's words
    (an error of the pages' own, such as a form's refused choice: its message)."""
    return error.describe(remedy=spell) if isinstance(error, FacesearchError) else str(error)


def remedies(error: FacesearchError) -> list[dict]:
    """The error's remedies as JSON: ``[{"action": "check" | None, "args": {parameter: value | None}}]``."""
    return [{"action": r.action, "args": dict(r.args)} for r in error.remedies]
