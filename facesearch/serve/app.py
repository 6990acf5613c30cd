"""The FastAPI application of ``facesearch serve``: the JSON API under /api/v1, the web pages, authentication and
one error shape.

Every request but /health, the OpenAPI description (and its Swagger UI, /api/docs) and the login page needs an
API key (``facesearch keys create``): header ``X-API-Key: KEY`` (or ``Authorization: Bearer KEY``), or the cookie
the login page sets. A read-only key may recognize and read; changing the gallery needs a full key (and a writable
gallery). A change authenticated by the cookie must also pass the CSRF checks (``guard``). Errors are JSON
``{"error": {"status", "reason"}}`` (and ``remedy`` where the library says what to do: ``serve.remedies``) with a
4xx code for anything the caller can fix (never a traceback, never a server path); pages show the same reason. A
library error is answered by its type: each ``FacesearchError`` class carries its HTTP status and status word
(``facesearch.errors``); anything else is a bug (500, its traceback in the server's log).
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from facesearch import __version__
from facesearch.errors import FacesearchError
from facesearch.serve import api, pages, remedies
from facesearch.serve.guard import DOCS_CSP, HEADERS, BodyLimit, SecurityHeaders, SubjectSegments
from facesearch.serve.service import Service

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent


def _error(request: Request, http_status: int, status: str, reason: str, remedy: list[dict] | None = None) -> Response:
    """An error as the API's JSON (``remedy``: what to do, where the library says it), or as a page for a browser
    that asked for one."""
    if pages.wants_page(request):
        return pages.error_page(request, http_status, reason)
    return JSONResponse({"error": {"status": status, "reason": reason, **({"remedy": remedy} if remedy else {})}},
                        status_code=http_status)


def create_app(service: Service, threads: int = 16) -> FastAPI:
    """The application over one running ``Service`` (the caller closes the service); ``threads``: blocking
    handlers (recognize, enroll, explain) that run at once."""
    import secrets
    from contextlib import asynccontextmanager

    import anyio.to_thread
    from fastapi.staticfiles import StaticFiles

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads  # anyio's default: 40
        yield

    # FastAPI's own Swagger UI and ReDoc load their scripts from a CDN: /api/docs (``docs``) serves a local copy.
    app = FastAPI(title="facesearch", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  openapi_url="/api/v1/openapi.json",
                  description="Face recognition over one gallery of enrolled faces: recognize, subjects and their "
                              "faces, explanations. Authenticate with the X-API-Key header. A subject's name is one "
                              "path segment, percent-encoded (a `/` in it as `%2F`).")
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

    @app.exception_handler(FacesearchError)
    async def refusal(request: Request, e: FacesearchError):  # by type: each error class carries its status
        if e.http_status == 401 and pages.is_page(request):
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
        return _error(request, e.http_status, e.status, service.public(remedies.reason(e)),  # its paths stay its own
                      remedies.remedies(e))

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


class ListenError(FacesearchError):
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
            raise ListenError(f"{port} on {host} is in use by another program (another facesearch service?): stop it, "
                              "or choose another", param="port") from None
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
