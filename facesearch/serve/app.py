"""The FastAPI application of ``facesearch serve``: the JSON API under /api/v1, the web pages, authentication and
one error shape.

Every request but /health, the OpenAPI description (and its Swagger UI, /api/docs) and the login page needs an
API key (``facesearch keys create``): header ``X-API-Key: KEY`` (or ``Authorization: Bearer KEY``), or the cookie
the login page sets. A read-only key may recognize and read; changing the gallery needs a full key (and a writable
gallery). A change authenticated by the cookie must also pass the CSRF checks (``guard``). Errors are JSON
``{"error": {"status", "reason"}}`` with a 4xx code for anything the caller can fix (never a traceback, never a
server path); pages show the same reason.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request, Security
from fastapi import Path as Path_
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesearch import __version__
from facesearch.gallery import FaceNotFound, GalleryError, IdentityNotFound, ModelMismatchError
from facesearch.serve.guard import (DOCS_CSP, HEADERS, SAFE_METHODS, BodyLimit, SecurityHeaders, SubjectSegments,
                                    check_csrf, csrf_token)
from facesearch.serve.service import Service, UploadError

logger = logging.getLogger(__name__)

KEY_HEADER = "X-API-Key"
KEY_COOKIE = "facesearch_key"
PACKAGE = Path(__file__).resolve().parent
# A face id within SQL's 64-bit integers: beyond them a 422, not SQLite's OverflowError.
FaceId = Annotated[int, Path_(ge=1, le=2**63 - 1, description="a face id")]


@dataclass(frozen=True)
class Caller:
    key_name: str
    read_only: bool
    csrf: str | None = None  # the session's CSRF token (cookie sessions: the pages' forms carry it)


class ApiError(Exception):
    """A refusal with an HTTP status, a short machine-readable status and a reason for people."""

    def __init__(self, http_status: int, status: str, reason: str):
        super().__init__(reason)
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
                       description="an API key of the gallery (`facesearch keys create NAME`); also accepted as "
                                   "`Authorization: Bearer KEY`")


async def caller(request: Request, _: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    """Dependency: the authenticated caller (401 without a key the gallery accepts; 403 for a change by the login
    cookie that fails the CSRF checks)."""
    key, by_cookie = _key_of(request)
    if not key:
        raise ApiError(401, "unauthorized", f"an API key is required: send it as the {KEY_HEADER} header "
                                            "(create one with `facesearch keys create NAME`)")
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


def _error(request: Request, http_status: int, status: str, reason: str) -> Response:
    """An error as the API's JSON, or as a page for a browser that asked for one."""
    from facesearch.serve import pages

    if pages.wants_page(request):
        return pages.error_page(request, http_status, reason)
    return JSONResponse({"error": {"status": status, "reason": reason}}, status_code=http_status)


def create_app(service: Service, threads: int = 16) -> FastAPI:
    """The application over one running ``Service`` (the caller closes the service); ``threads``: blocking
    handlers (recognize, enroll, explain) that run at once."""
    import secrets
    from contextlib import asynccontextmanager

    import anyio.to_thread
    from fastapi.staticfiles import StaticFiles

    from facesearch.serve import api, pages

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads  # anyio's default: 40
        yield

    # FastAPI's own Swagger UI and ReDoc load their scripts from a CDN: /api/docs (``docs``) serves a local copy.
    app = FastAPI(title="facesearch", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  openapi_url="/api/v1/openapi.json",
                  description="Face recognition over a facesearch gallery: recognize, subjects and their faces, "
                              "explanations. Authenticate with the X-API-Key header. A subject's name is one path "
                              "segment, percent-encoded (a `/` in it as `%2F`).")
    app.state.service = service
    app.state.csrf_secret = secrets.token_bytes(32)  # per process: a restart makes open forms reload
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=swagger_assets()), name="swagger")  # before /static: a prefix
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(SubjectSegments)
    app.add_middleware(BodyLimit, max_upload=lambda: service.limits.max_bytes,
                       max_archive=lambda: service.limits.max_archive_bytes)
    app.add_middleware(SecurityHeaders)  # the outermost: on the 413s of BodyLimit too

    @app.get("/api/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        """Swagger UI over the OpenAPI document, from files this server holds (no CDN). Not FastAPI's
        ``get_swagger_ui_html``: that starts Swagger UI with an inline script, which the Content-Security-Policy
        forbids; ``static/swagger-init.js`` does it from a file."""
        page = pages.templates.TemplateResponse(request, "swagger.html", {
            "assets": SWAGGER_ASSETS, "openapi_url": app.openapi_url})
        page.headers["content-security-policy"] = DOCS_CSP
        return page

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True, "version": __version__}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        if e.http_status == 401 and pages.is_page(request):
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
        return _error(request, e.http_status, e.status, service.public(e.reason))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError):
        return _error(request, e.http_status, e.status, service.public(e.reason))

    @app.exception_handler(GalleryError)
    async def gallery_error(request: Request, e: GalleryError):
        reason = service.public(str(e))  # the server's paths stay its own
        if isinstance(e, (IdentityNotFound, FaceNotFound)):
            return _error(request, 404, "not_found", reason)
        if isinstance(e, ModelMismatchError):
            return _error(request, 409, "model_mismatch", reason)
        if "read-only" in reason:
            return _error(request, 403, "read_only_gallery", reason)
        return _error(request, 409 if "exists already" in reason else 400, "refused", reason)

    from facesearch.cluster import ClusterError

    @app.exception_handler(ClusterError)
    async def cluster_error(request: Request, e: ClusterError):
        return _error(request, 404 if "no group" in str(e) or "no clusters folder" in str(e) else 400, "refused",
                      service.public(str(e)))

    @app.exception_handler(OSError)
    async def storage_error(request: Request, e: OSError):  # a file the server could not write (or read)
        logger.exception("file system error answering %s %s", request.method, request.url.path)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _error(request, 503, "read_only_gallery", "the server may not write to the gallery's folder "
                                                    f"({e.strerror}): it can recognize and read, not change")
        return _error(request, 507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 503, "storage_error",
                      f"the server could not store or read a file ({e.strerror or type(e).__name__}); its log has "
                      "the details")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())
        return _error(request, 422, "invalid_request", service.public(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(request, e.status_code, "not_found" if e.status_code == 404 else "http_error", str(e.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):  # a bug: logged with its traceback, answered without it
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        response = _error(request, 500, "internal_error", f"{type(e).__name__}: the server's log has the details")
        response.headers.update(HEADERS)  # answered outside SecurityHeaders (Starlette's outermost middleware)
        return response

    return app


SWAGGER_ASSETS = "/static/swagger-ui"


def swagger_assets() -> Path:
    """The folder of Swagger UI's script and style sheet: the copy the fastapi-offline package ships (the serve
    extra installs it)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


class ListenError(Exception):
    """The service cannot listen where it was asked to (the port is in use, the address is not this machine's)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` for ``uvicorn.Server.run(sockets=...)``: bound before the service says
    where it serves, so a busy port is told plainly (ListenError naming it) instead of after a URL that is not
    ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free; one in use is not
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is in use by another program (another facesearch serve?): "
                              "stop it, or choose another port with --port") from None
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
