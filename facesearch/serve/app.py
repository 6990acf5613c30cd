"""The FastAPI application of ``facesearch serve``: the JSON API under /api/v1, the web pages, authentication and
one error shape.

Every request but /health, the OpenAPI docs and the login page needs an API key (``facesearch keys create``):
header ``X-API-Key: KEY`` (or ``Authorization: Bearer KEY``), or the cookie the login page sets. A read-only key
may recognize and read; changing the gallery needs a full key. Errors are JSON ``{"error": {"status", "reason"}}``
with a 4xx code for anything the caller can fix (never a traceback); pages show the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesearch import __version__
from facesearch.gallery import FaceNotFound, GalleryError, IdentityNotFound, ModelMismatchError
from facesearch.serve.service import Service, UploadError

logger = logging.getLogger(__name__)

KEY_HEADER = "X-API-Key"
KEY_COOKIE = "facesearch_key"
PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Caller:
    key_name: str
    read_only: bool


class ApiError(Exception):
    """A refusal with an HTTP status, a short machine-readable status and a reason for people."""

    def __init__(self, http_status: int, status: str, reason: str):
        super().__init__(reason)
        self.http_status, self.status, self.reason = http_status, status, reason


def _key_of(request: Request) -> str | None:
    key = request.headers.get(KEY_HEADER)
    if not key:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return key or request.cookies.get(KEY_COOKIE)


def caller(request: Request) -> Caller:
    """Dependency: the authenticated caller (401 without a key the gallery accepts)."""
    key = _key_of(request)
    if not key:
        raise ApiError(401, "unauthorized", f"an API key is required: send it as the {KEY_HEADER} header "
                                            "(create one with `facesearch keys create NAME`)")
    info = request.app.state.service.gallery.check_key(key)
    if info is None:
        raise ApiError(401, "unauthorized", "this API key is not known to the gallery (revoked, or another gallery's)")
    return Caller(info.name, info.read_only)


def writer(who: Caller = Depends(caller)) -> Caller:
    """Dependency: a caller allowed to change the gallery (403 for a read-only key)."""
    if who.read_only:
        raise ApiError(403, "forbidden", f"the API key {who.key_name!r} is read-only: it may recognize and read, "
                                         "not change the gallery")
    return who


def _error(http_status: int, status: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "reason": reason}}, status_code=http_status)


def create_app(service: Service, threads: int = 16) -> FastAPI:
    """The application over one running ``Service`` (the caller closes the service); ``threads``: blocking
    handlers (recognize, enroll, explain) that run at once."""
    from contextlib import asynccontextmanager

    import anyio.to_thread
    from fastapi.staticfiles import StaticFiles

    from facesearch.serve import api, pages

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads  # anyio's default: 40
        yield

    app = FastAPI(title="facesearch", version=__version__, docs_url="/api/docs", redoc_url=None, lifespan=lifespan,
                  openapi_url="/api/v1/openapi.json",
                  description="Face recognition over a facesearch gallery: recognize, subjects and their faces, "
                              "explanations. Authenticate with the X-API-Key header.")
    app.state.service = service
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True, "version": __version__}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        if e.http_status == 401 and pages.is_page(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return _error(e.http_status, e.status, e.reason)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError):
        return _error(e.http_status, e.status, e.reason)

    @app.exception_handler(GalleryError)
    async def gallery_error(request: Request, e: GalleryError):
        reason = str(e).replace(str(service.gallery.folder), "the gallery")  # the server's paths stay its own
        if isinstance(e, (IdentityNotFound, FaceNotFound)):
            return _error(404, "not_found", reason)
        if isinstance(e, ModelMismatchError):
            return _error(409, "model_mismatch", reason)
        if "read-only" in reason:
            return _error(403, "read_only_gallery", reason)
        return _error(409 if "exists already" in reason else 400, "refused", reason)

    from facesearch.cluster import ClusterError

    @app.exception_handler(ClusterError)
    async def cluster_error(request: Request, e: ClusterError):
        return _error(404 if "no group" in str(e) or "no clusters folder" in str(e) else 400, "refused", str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())
        return _error(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, "not_found" if e.status_code == 404 else "http_error", str(e.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):  # a bug: logged with its traceback, answered without it
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error(500, "internal_error", f"{type(e).__name__}: the server's log has the details")

    return app
