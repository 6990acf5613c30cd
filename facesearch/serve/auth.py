"""Who is calling: the API key of a request (header, bearer token or the login page's cookie), the FastAPI
dependencies that admit a caller (``caller``) or a caller allowed to change the gallery (``writer``), and
``ApiError``, the refusal every route raises (``app`` turns it into the JSON error or an error page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi import Path as Path_
from fastapi.security import APIKeyHeader

from facesearch.errors import FacesearchError, Remedy
from facesearch.serve.guard import SAFE_METHODS, check_csrf, csrf_token

KEY_HEADER = "X-API-Key"
KEY_COOKIE = "facesearch_key"
# A face id within SQL's 64-bit integers: beyond them a 422, not SQLite's OverflowError.
FaceId = Annotated[int, Path_(ge=1, le=2**63 - 1, description="a face id")]


@dataclass(frozen=True)
class Caller:
    key_name: str
    read_only: bool
    csrf: str | None = None  # the session's CSRF token (cookie sessions: the pages' forms carry it)


class ApiError(FacesearchError):
    """A refusal with an HTTP status, a short machine-readable status and a reason for people."""

    def __init__(self, http_status: int, status: str, reason: str, **about):  # about: param, remedy
        super().__init__(reason, **about)
        self.http_status, self.status, self.reason = http_status, status, reason


def _key_of(request: Request) -> tuple[str | None, bool]:
    """The API key of a request, and whether it came from the login cookie (not a header)."""
    key = request.headers.get(KEY_HEADER)
    if not key:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if key:
        return key, False
    key = request.cookies.get(KEY_COOKIE)
    return key or None, bool(key)


# The key's header as the OpenAPI document's security scheme (Swagger UI's "Authorize"); ``caller`` reads the key.
API_KEY = APIKeyHeader(name=KEY_HEADER, auto_error=False, scheme_name="APIKey",
                       description="an API key of the gallery (its administrator creates them on the server); also "
                                   "accepted as `Authorization: Bearer KEY`")


async def caller(request: Request, _: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    """Dependency: the authenticated caller (401 without a key the gallery accepts; 403 for a change by the login
    cookie that fails the CSRF checks)."""
    key, by_cookie = _key_of(request)
    if not key:
        raise ApiError(401, "unauthorized", f"an API key is required: send it as the {KEY_HEADER} header; the "
                       "gallery's administrator creates keys", remedy=Remedy.run("keys.create", name="NAME"))
    info = request.app.state.service.gallery.check_key(key)
    if info is None:
        raise ApiError(401, "unauthorized", "this API key is not known to the gallery (revoked, or another gallery's)")
    secret = request.app.state.csrf_secret
    if by_cookie and request.method not in SAFE_METHODS:
        why = await check_csrf(request, secret, key)
        if why is not None:
            raise ApiError(403, "csrf", f"refused: {why}")
    return Caller(info.name, info.read_only, csrf_token(secret, key))


def writer(request: Request, who: Caller = Depends(caller)) -> Caller:
    """Dependency: a caller allowed to change the gallery (403 for a read-only key, or a read-only gallery)."""
    if who.read_only:
        raise ApiError(403, "forbidden", f"the API key {who.key_name!r} is read-only: it may recognize and read, "
                                         "not change the gallery")
    if request.app.state.service.gallery.read_only:
        raise ApiError(403, "read_only_gallery", "the served gallery is read-only (the server may not write to it): "
                                                 "it can recognize and read, not change")
    return who
