"""What stands between a request and the handlers of ``facesearch serve``: security headers on every answer, a
body size limit enforced while the body streams in, subject names kept as one path segment, and the CSRF checks
of cookie-authenticated changes.

- ``SecurityHeaders``: a Content-Security-Policy (scripts only from the server's own static files, no inline
  script, no plugins, no framing), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``.
- ``BodyLimit``: a declared ``Content-Length`` over the limit is answered 413 before a byte of the body is read;
  a chunked (or lying) body is counted as it arrives and cut at the limit, also 413. The limit is the upload size
  (plus base64's third for JSON) on the upload endpoints (two photos for verify), the archive size on calibrate,
  64 KiB elsewhere.
- ``SubjectSegments``: a subject name is one percent-encoded path segment (``x/faces`` is ``x%2Ffaces``);
  Starlette decodes ``%2F`` before routing, which would split the name.
- ``check_csrf``: a change (POST, PATCH, DELETE...) authenticated by the login cookie must come from a page of
  this server (``Origin``, else ``Referer``: same scheme, host and port as the request) and carry the session's
  token (form field ``csrf_token`` or header ``X-CSRF-Token``). A request with the key in a header (curl, a
  program) cannot be forged by a browser and is not checked.
- ``flash_value`` / ``read_flash``: the message a form's change leaves for the page it goes back to travels in a
  short-lived cookie signed by the server, never in the URL: a link cannot make a page show words of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import quote, unquote, urlsplit

CSP = ("default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'; img-src 'self' blob:; style-src 'self'; connect-src 'self'")
# /api/docs: Swagger UI's style sheet draws its icons as data: images; its scripts are files of this server as ever.
DOCS_CSP = CSP.replace("img-src 'self' blob:", "img-src 'self' data:")
# An explanation's report.html (facesearch.visualize.report): one file with inline CSS and data: images, no script.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'; form-action 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "same-origin",
           "x-frame-options": "DENY"}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SMALL_BODY = 64 * 1024  # anything but a photo upload: names, form fields
FORM_SLACK = 64 * 1024  # a multipart upload's own bytes (boundaries, headers, the other fields)
UPLOAD_PATHS = ("/api/v1/recognize", "/api/v1/explain", "/api/v1/detect", "/api/v1/verify")  # and any path
# ending in /faces (enroll a photo)
ARCHIVE_PATH = "/api/v1/calibrate"  # a zip of calibration photos: its own, larger limit


class SecurityHeaders:
    """ASGI middleware: the headers of ``HEADERS`` on every response that does not set its own."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(Exception):
    """Raised into the application by ``BodyLimit``'s receive once the body passes the limit."""


def is_upload(scope) -> bool:
    path = scope.get("path", "")
    return path in UPLOAD_PATHS or path.endswith("/faces")


def body_limit(scope, max_upload: int, max_archive: int = 0) -> int:
    """The most bytes a request to this path may send."""
    if scope.get("path") == ARCHIVE_PATH:
        return max_archive + FORM_SLACK
    if is_upload(scope):
        kind = dict(scope.get("headers", [])).get(b"content-type", b"")
        photos = 2 if scope.get("path") == "/api/v1/verify" else 1
        return photos * (max_upload * 4 // 3 + 4 if kind.startswith(b"application/json") else max_upload) + FORM_SLACK
    return SMALL_BODY


def too_large_response(limit: int, declared: int | None, allowed: str) -> tuple[dict, dict]:
    """The 413 of a body over ``limit`` bytes (``declared``: its Content-Length; ``allowed``: what the endpoint
    takes, in words)."""
    size = f"{declared} bytes" if declared is not None else "longer"
    body = json.dumps({"error": {"status": "too_large", "reason": (
        f"the request body is {size}, more than the {limit} allowed here: {allowed}")}}).encode()
    start = {"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]}  # the rest of the body is not read: the connection cannot be reused
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware: refuse a body over ``body_limit`` with 413, reading at most the limit (plus one chunk).

    ``max_upload``, ``max_archive``: callables giving the largest photo and calibration archive in bytes (the
    service's limits, read per request)."""

    def __init__(self, app, max_upload, max_archive=lambda: 0):
        self.app, self.max_upload, self.max_archive = app, max_upload, max_archive

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_upload, max_archive = self.max_upload(), self.max_archive()
        limit = body_limit(scope, max_upload, max_archive)
        photo = (f"an archive may have {max_archive} bytes" if scope.get("path") == ARCHIVE_PATH
                 else f"a photo may have {max_upload} bytes (base64: a third more)" if is_upload(scope)
                 else "this request carries no photo")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            for message in too_large_response(limit, int(declared) if declared.isdigit() else None, photo):
                await send(message)
            return
        received, exceeded, started = 0, False, False

        async def counted_receive():
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded and not started:
                return  # whatever the application answers to a cut body, the client gets the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            for message in too_large_response(limit, None, photo):
                await send(message)


class SubjectSegments:
    """ASGI middleware: under ``/api/v1/subjects/`` and ``/subjects/``, the segment after the prefix stays
    percent-encoded in ``scope["path"]`` (the handlers decode it with ``subject_name``), so a name holding ``/``
    (sent as ``%2F``) is one segment and ``x/faces`` is a subject, not the faces of ``x``."""

    PREFIXES = ("/api/v1/subjects/", "/subjects/")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            raw = raw.decode("latin-1") if raw else quote(scope["path"])
            for prefix in self.PREFIXES:
                if raw.startswith(prefix) and scope["path"].startswith(prefix):
                    segment, slash, rest = raw[len(prefix):].partition("/")
                    scope = {**scope, "path": prefix + segment + slash + unquote(rest)}
                    break
        await self.app(scope, receive, send)


def subject_name(name: str) -> str:
    """The subject name of a path segment kept encoded by ``SubjectSegments``."""
    return unquote(name)


# -- CSRF ---------------------------------------------------------------------------------------------


def csrf_token(secret: bytes, key: str) -> str:
    """The token of the session that logged in with ``key`` (HMAC with the server's secret: a page of another
    origin can neither read it nor compute it)."""
    return hmac.new(secret, b"csrf:" + key.encode(), hashlib.sha256).hexdigest()


FLASH_COOKIE = "facesearch_flash"
FLASH_SECONDS = 60  # a message waits this long for its page (the redirect right after the form)


def flash_value(secret: bytes, message: dict[str, str]) -> str:
    """A cookie value carrying ``message`` ({"message": ..., "error": ...}), signed and dated."""
    data = json.dumps({**message, "at": int(time.time())}, ensure_ascii=False).encode()
    body = base64.urlsafe_b64encode(data).decode().rstrip("=")  # no "=": a cookie value without quotes
    return f"{body}.{hmac.new(secret, b'flash:' + body.encode(), hashlib.sha256).hexdigest()}"


def read_flash(secret: bytes, value: str | None) -> dict[str, str]:
    """The message of a ``flash_value`` cookie, or {} (none, a forged or altered one, or one too old)."""
    body, _, sign = (value or "").partition(".")
    expected = hmac.new(secret, b"flash:" + body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(sign.encode(), expected.encode()):
        return {}
    try:
        message = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return {}
    if not isinstance(message, dict) or not 0 <= time.time() - message.pop("at", 0) <= FLASH_SECONDS:
        return {}
    return {k: v for k, v in message.items() if k in ("message", "error") and isinstance(v, str)}


def same_origin(request) -> str | None:
    """None when the request comes from a page of this server (its Origin, else its Referer, has the request's
    scheme, host and port); else why not."""
    origin = request.headers.get("origin")
    source = origin if origin and origin != "null" else request.headers.get("referer")
    if not source:
        return "the request names no Origin or Referer"
    theirs, ours = urlsplit(source), request.url
    default = {"http": 80, "https": 443}
    try:
        their_port = theirs.port or default.get(theirs.scheme)
    except ValueError:
        return f"malformed origin {source[:100]!r}"
    if (theirs.scheme, (theirs.hostname or "").lower(), their_port) != \
            (ours.scheme, (ours.hostname or "").lower(), ours.port or default.get(ours.scheme)):
        return f"it comes from {theirs.scheme}://{theirs.netloc}, not from this server's pages"
    return None


async def check_csrf(request, secret: bytes, key: str | None) -> str | None:
    """None when a cookie-authenticated change may go ahead; else why it is refused."""
    why = same_origin(request)
    if why is not None:
        return why
    if key is None:
        return None  # no session yet (logging in): the origin is all there is to check
    sent, form = request.headers.get(CSRF_HEADER), None
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), csrf_token(secret, key).encode()):
        if form is not None:
            await form.close()  # refused: nobody else reads its uploaded files
        return "the form's security token is missing or stale: reload the page and try again"
    return None
