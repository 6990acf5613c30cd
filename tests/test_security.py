"""facesearch serve against a hostile caller, kept closed (issue 27):

- stored XSS: names, file names and messages made of script payloads reach every page (attributes, scripts,
  URLs) and run nothing, in the real Chromium (a dialog, a request for the payload's image or a CSP violation
  would tell), and every answer carries the Content-Security-Policy and no page holds inline script;
- CSRF: a change authenticated by the login cookie without the session's token, or from another origin or
  another port, is refused (403) and changes nothing; the API with its key in a header (curl) is not affected;
- bodies: a declared oversize body is refused before it is read, a chunked one is cut at the limit (the server
  pulls at most about the limit, the client's generator is not exhausted), a 200 MB one costs < 50 MB of memory;
- paths: no answer (JSON, page, redirect) to a read-only key names a server path (the gallery, the temp folder).
"""

from __future__ import annotations

import base64
import contextlib
import html.parser
import http.server
import json
import os
import re
import select
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
pytest.importorskip("uvicorn")

import markupsafe  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from builders import enrolled_gallery, run_cli, serving  # noqa: E402

PAYLOADS = ["'+alert(1)+'", '"><script>alert(1)</script>', "javascript:alert(1)",
            "</script><img src=x onerror=alert(1)>"]
# (a browser sends a file name's " as %22: the file names' payloads do without)
FILE_PAYLOADS = ["'+alert(1)+'.jpg", "'><img src=x onerror=alert(1)>.jpg", "javascript:alert(1).jpg"]
LIMIT = 2_000_000  # the upload limit of the TestClient's service


# -- the gallery: four people named by the payloads ---------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(sample_photos, tmp_path_factory):
    """A gallery of 4 sample people x 2 photos, renamed to the payloads; its keys; each payload's photos (the
    first two enrolled, the others not)."""
    from facesearch.gallery import Gallery

    root = tmp_path_factory.mktemp("hostile")
    checkpoint, photos = enrolled_gallery(root, sample_photos, people=len(PAYLOADS))
    with Gallery(root / "gallery") as g:
        for old, new in zip(sorted(photos), PAYLOADS):
            g.rename(old, new)
        keys = {"full": g.create_key("admin"), "read": g.create_key("viewer", read_only=True)}
    return root, checkpoint, {new: photos[old] for old, new in zip(sorted(photos), PAYLOADS)}, keys


def open_service(hostile, folder: Path, **limits):
    from facesearch.serve.service import Limits, Service

    shutil.copytree(hostile[0] / "gallery", folder)
    return Service(folder, checkpoint=hostile[1], limits=Limits(**limits) if limits else Limits())


@pytest.fixture()
def client(hostile, tmp_path):
    from facesearch.serve.app import create_app

    service = open_service(hostile, tmp_path / "gallery", max_bytes=LIMIT, max_pixels=4_000_000)
    with TestClient(create_app(service)) as c:
        yield c
    service.close()


def key(hostile, kind="full") -> dict:
    return {"X-API-Key": hostile[3][kind]}


def enc(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def photo(path: Path, name: str | None = None) -> dict:
    return {"photo": (name or path.name, path.read_bytes(), "image/jpeg")}


def subjects(client, hostile) -> list[str]:
    return [s["name"] for s in client.get("/api/v1/subjects", headers=key(hostile)).json()["subjects"]]


# -- headers and the pages' markup --------------------------------------------------------------------------


class Markup(html.parser.HTMLParser):
    """What in a page could run script: inline scripts, event-handler attributes, javascript: URLs."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            url = (value or "").strip().lower()
            if name in ("href", "src", "action", "formaction") and url.startswith("javascript:"):
                self.problems.append(f"<{tag} {name}={value!r}>")
        if tag == "script" and not (dict(attrs).get("src") or "").startswith("/static/"):
            self.problems.append(f"<script {attrs}> (inline, or not ours)")


def assert_headers(response) -> None:
    csp = response.headers.get("content-security-policy", "")
    rules = dict((part.strip().split(" ", 1) + [""])[:2] for part in csp.split(";") if part.strip())
    assert rules.get("script-src") == "'self'", (response.url, csp)
    assert "unsafe-inline" not in rules.get("script-src", "") + rules.get("default-src", ""), csp
    assert rules.get("object-src") == "'none'" and rules.get("base-uri") == "'none'", csp
    assert rules.get("frame-ancestors") == "'none'", csp
    assert response.headers.get("x-content-type-options") == "nosniff", response.url
    assert response.headers.get("referrer-policy") == "same-origin", response.url


def pages_of(client, hostile) -> list[str]:
    names = subjects(client, hostile)
    payload = enc(PAYLOADS[1])
    return ["/login", f"/login?next={enc('javascript:alert(1)')}", "/subjects", *[f"/subjects/{enc(n)}" for n in names],
            "/who", "/gallery", "/gallery?check=1", "/clusters", "/api/docs",
            f"/subjects?message={payload}&error={payload}"]


def test_every_answer_carries_the_policy_and_no_page_holds_script_of_its_own(client, hostile):
    for url in pages_of(client, hostile):
        r = client.get(url, headers=key(hostile))
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], (url, r.status_code)
        assert_headers(r)
        markup = Markup()
        markup.feed(r.text)
        assert not markup.problems, (url, markup.problems)
        for payload in PAYLOADS:  # escaped wherever it is shown
            assert payload not in r.text or "<" not in payload and '"' not in payload and "'" not in payload, url
    others = [client.get("/api/v1/subjects", headers=key(hostile)), client.get("/api/v1/subjects"),
              client.get("/api/v1/subjects/nobody", headers=key(hostile)), client.get("/static/who.js"),
              client.get("/api/v1/openapi.json"), client.get("/health"),
              client.post("/api/v1/recognize", content=b"x" * (LIMIT * 2), headers=key(hostile))]
    for r in others:
        assert_headers(r)
    assert others[-1].status_code == 413


def test_the_api_docs_run_no_foreign_script(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and "/api/v1/openapi.json" in page.text
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts == ['<script src="/static/swagger-ui/swagger-ui-bundle.js" defer>',  # this server's files only:
                       '<script src="/static/swagger-init.js" defer>'], scripts  # no CDN, nothing inline
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "facesearch"


# -- CSRF ---------------------------------------------------------------------------------------------------


def logged_in(client, hostile) -> str:
    """The browser's state after logging in with the full key: its cookie; returns the page's CSRF token."""
    r = client.post("/login", data={"key": hostile[3]["full"], "next": "/subjects"}, follow_redirects=False,
                    headers={"Origin": "http://testserver"})
    assert r.status_code == 303 and "facesearch_key" in r.headers["set-cookie"]
    client.cookies.set("facesearch_key", hostile[3]["full"])
    page = client.get("/subjects")
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)


def test_a_cookie_change_needs_the_token_and_this_servers_origin(client, hostile):
    token = logged_in(client, hostile)
    name = PAYLOADS[0]
    here, other_port, other_site = "http://testserver", "http://testserver:8001", "https://evil.example"
    attempts = {
        "no token": ({"Origin": here}, {}),
        "wrong token": ({"Origin": here}, {"csrf_token": "0" * 64}),
        "not a token": ({"Origin": here}, {"csrf_token": "é" * 64}),
        "another port": ({"Origin": other_port}, {"csrf_token": token}),
        "another site": ({"Origin": other_site}, {"csrf_token": token}),
        "another site's referer": ({"Referer": other_site + "/attack.html"}, {"csrf_token": token}),
        "no origin": ({}, {"csrf_token": token}),
        "origin null": ({"Origin": "null"}, {"csrf_token": token}),
    }
    for case, (headers, form) in attempts.items():
        r = client.post(f"/subjects/{enc(name)}/delete", data=form, headers=headers, follow_redirects=False)
        assert r.status_code == 403 and r.json()["error"]["status"] == "csrf", (case, r.status_code, r.text)
    r = client.post("/subjects", data={"name": "Mallory", "csrf_token": token}, headers={"Origin": other_port})
    assert r.status_code == 403
    # the API through the cookie (what who.js uses) is checked the same way: a form or a no-cors fetch from
    # another port of this host carries the cookie (SameSite=Strict does not separate ports)
    spare = hostile[2][name][2]
    refused = [client.post(f"/api/v1/subjects/{enc(name)}/faces", files=photo(spare), headers={"Origin": other_port}),
               client.post(f"/api/v1/subjects/{enc(name)}/faces", files=photo(spare), headers={"Origin": here}),
               client.delete(f"/api/v1/subjects/{enc(name)}", headers={"Origin": here}),
               client.post("/api/v1/subjects", content=json.dumps({"name": "Mallory"}),
                           headers={"Origin": other_port, "content-type": "text/plain", "X-CSRF-Token": token}),
               client.post("/logout", headers={"Origin": here}, follow_redirects=False)]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert name in subjects(client, hostile) and "Mallory" not in subjects(client, hostile)
    assert client.get(f"/api/v1/subjects/{enc(name)}", headers=key(hostile)).json()["faces"] == 2  # nothing changed
    # from this server's page, with its token: done
    ok = client.post(f"/subjects/{enc(name)}/delete", data={"csrf_token": token}, headers={"Origin": here},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/subjects"
    assert f"deleted {markupsafe.escape(name)}" in client.get("/subjects").text  # the message, in a cookie
    by_referer = client.post("/subjects", data={"name": "Zoë", "csrf_token": token}, follow_redirects=False,
                             headers={"Referer": here + "/subjects"})
    assert by_referer.status_code == 303 and "Zoë" in subjects(client, hostile)
    fetched = client.post("/api/v1/recognize", files=photo(spare), headers={"Origin": here, "X-CSRF-Token": token})
    assert fetched.status_code == 200  # who.js: the cookie, the page's origin and its token


def test_a_login_from_another_site_is_refused(client, hostile):
    r = client.post("/login", data={"key": hostile[3]["full"]}, headers={"Origin": "http://testserver:9"},
                    follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = client.post("/login", data={"key": hostile[3]["full"], "next": "/\\evil.example"}, follow_redirects=False,
                    headers={"Origin": "http://testserver"})
    assert r.headers["location"] == "/subjects"  # an open redirect refused


def test_the_api_with_a_key_header_needs_no_token(client, hostile):
    """curl and programs send the key in a header, which no page of another origin can add: no token, no origin."""
    created = client.post("/api/v1/subjects", json={"name": "Ada"}, headers=key(hostile))
    assert created.status_code == 201
    bearer = {"Authorization": f"Bearer {hostile[3]['full']}", "Origin": "https://anywhere.example"}
    assert client.delete("/api/v1/subjects/Ada", headers=bearer).status_code == 200


# -- bodies -------------------------------------------------------------------------------------------------


class Counting:
    """An ASGI wrapper counting the request body bytes the application pulled from the server."""

    def __init__(self, app):
        self.app, self.pulled = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                self.pulled += len(message.get("body", b""))
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


def test_a_declared_oversize_body_is_refused_before_it_is_read(client, hostile):
    pulled = Counting(client.app)
    with TestClient(pulled) as c:
        cases = [c.post("/api/v1/recognize", json={"image_base64": "A" * (LIMIT * 2)}, headers=key(hostile, "read")),
                 c.post("/api/v1/recognize", files=photo_bytes(LIMIT + 100_000), headers=key(hostile, "read")),
                 c.post("/api/v1/subjects", content=b"{" + b" " * 100_000 + b"}", headers=key(hostile)),
                 c.post("/subjects/x/faces", files=photo_bytes(LIMIT * 3))]
    for r in cases:
        assert r.status_code == 413 and r.json()["error"]["status"] == "too_large", r.text
        assert "allowed" in r.json()["error"]["reason"]
    assert pulled.pulled == 0
    ok = client.post("/api/v1/recognize", json={"image_base64": base64.b64encode(b"x" * (LIMIT - 10)).decode()},
                     headers=key(hostile, "read"))
    assert ok.status_code == 422 and ok.json()["error"]["status"] == "not_an_image"  # up to the limit: read, decoded


def photo_bytes(n: int) -> dict:
    return {"photo": ("big.jpg", b"\xff" * n, "image/jpeg")}


def send_chunked(base: str, path: str, headers: dict, chunks) -> tuple[int, bytes, int]:
    """POST the chunks (a generator) with chunked transfer encoding, stopping as soon as the server answers;
    returns (status, body, bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    headers = {"Host": f"{host}:{port}", "Transfer-Encoding": "chunked", **headers}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
    sock.setblocking(False)
    sent, pending, answer = 0, b"", b""
    try:
        while True:
            readable, writable, _ = select.select([sock], [sock] if pending is not None else [], [], 20)
            if readable:
                break
            assert writable, "the server neither read nor answered for 20 s"
            if not pending:
                chunk = next(chunks, None)
                if chunk is None:
                    pending = b"0\r\n\r\n"
                    chunks = iter(())
                else:
                    pending = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                    sent += len(chunk)
            try:
                pending = pending[sock.send(pending):]
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(20)
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + content_length(answer) + 4:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, sent


def content_length(answer: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", answer.split(b"\r\n\r\n")[0], re.I)
    return int(found.group(1)) if found else 0


class Stream:
    """``total`` bytes in ``chunk``-sized pieces after a ``head``: a generator that counts what was taken."""

    def __init__(self, head: bytes, total: int, chunk: int = 64 * 1024, fill: bytes = b"A"):
        self.head, self.total, self.piece, self.taken = head, total, fill * chunk, 0

    def __iter__(self):
        yield self.head
        while self.taken < self.total:
            self.taken += len(self.piece)
            yield self.piece

    @property
    def exhausted(self) -> bool:
        return self.taken >= self.total


def test_a_chunked_body_is_cut_at_the_limit(client, hostile):
    pulled = Counting(client.app)
    json_limit = LIMIT * 4 // 3 + 64 * 1024 + 4
    boundary = "xyz"
    multipart_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n"
                      "Content-Type: image/jpeg\r\n\r\n").encode()
    cases = [("/api/v1/recognize", {"Content-Type": "application/json", **key(hostile, "read")},
              b'{"image_base64": "', json_limit),
             ("/api/v1/explain", {"Content-Type": f"multipart/form-data; boundary={boundary}", **key(hostile, "read")},
              multipart_head, LIMIT + 64 * 1024),
             (f"/api/v1/subjects/{enc(PAYLOADS[0])}/faces",
              {"Content-Type": f"multipart/form-data; boundary={boundary}", **key(hostile)}, multipart_head,
              LIMIT + 64 * 1024),
             ("/api/v1/subjects", {"Content-Type": "application/json", **key(hostile)}, b'{"name": "', 64 * 1024)]
    with serving(pulled) as base:
        for path, headers, head, limit in cases:
            before = pulled.pulled
            body = Stream(head, 50 * LIMIT)
            status, answer, sent = send_chunked(base, path, headers, iter(body))
            assert status == 413 and json.loads(answer)["error"]["status"] == "too_large", (path, status, answer)
            assert not body.exhausted and sent < 10 * LIMIT, (path, sent)
            assert pulled.pulled - before <= limit + 256 * 1024, (path, pulled.pulled - before, limit)
    assert client.get(f"/api/v1/subjects/{enc(PAYLOADS[0])}", headers=key(hostile)).json()["faces"] == 2


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the memory used from /proc")
def test_a_200_mb_chunked_body_costs_the_server_little_memory(hostile, tmp_path):
    """The probe's case: 200 MB of {"image_base64": ...}, chunked, with a read-only key, at the default 20 MB limit."""
    from facesearch.serve.app import create_app

    service = open_service(hostile, tmp_path / "gallery")
    pulled = Counting(create_app(service))
    peak, done = [rss()], threading.Event()

    def watch():
        while not done.wait(0.005):
            peak.append(rss())

    try:
        with serving(pulled) as base:
            start = rss()
            watcher = threading.Thread(target=watch)
            watcher.start()
            body = Stream(b'{"image_base64": "', 200 * 1024 * 1024, chunk=256 * 1024)
            headers = {"Content-Type": "application/json", **key(hostile, "read")}
            status, answer, sent = send_chunked(base, "/api/v1/recognize", headers, iter(body))
            done.set()
            watcher.join()
    finally:
        service.close()
    assert status == 413 and not body.exhausted
    assert pulled.pulled <= service.limits.max_bytes * 4 // 3 + 64 * 1024 + 512 * 1024
    assert max(peak) - start < 50 * 1024 * 1024, f"RSS grew {(max(peak) - start) / 2**20:.0f} MB"


# -- paths --------------------------------------------------------------------------------------------------


def private_places(client, hostile) -> list[str]:
    service = client.app.state.service
    return [str(service.gallery.folder), str(service.scratch), str(hostile[1]), tempfile.gettempdir() + os.sep]


def assert_no_paths(response, places: list[str], what: str) -> None:
    text = response.text if "image" not in response.headers.get("content-type", "") else ""
    text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "data:", text)  # random base64 may spell /tmp/
    for place in places:
        assert place not in text and place not in response.headers.get("location", ""), (what, place, text[:500])


@pytest.mark.slow
def test_no_answer_to_a_read_only_key_names_a_server_path(client, hostile, tmp_path):
    service, read = client.app.state.service, key(hostile, "read")
    places = private_places(client, hostile)
    name = PAYLOADS[2]
    spare = hostile[2][name][2]
    faces = client.get(f"/api/v1/subjects/{enc(name)}/faces", headers=read).json()["faces"]
    not_photo = tmp_path / "notes.jpg"
    not_photo.write_text("not a photo")
    explained = client.post("/api/v1/explain", files=photo(spare), headers=read)
    assert explained.status_code == 200, explained.text
    answers = {
        "subjects": client.get("/api/v1/subjects", headers=read),
        "subject": client.get(f"/api/v1/subjects/{enc(name)}", headers=read),
        "faces": client.get(f"/api/v1/subjects/{enc(name)}/faces", headers=read),
        "face": client.get(f"/api/v1/faces/{faces[0]['id']}", headers=read),
        "no subject": client.get("/api/v1/subjects/nobody", headers=read),
        "no subject's faces": client.get("/api/v1/subjects/nobody/faces", headers=read),
        "no face": client.get("/api/v1/faces/999999", headers=read),
        "face id overflow": client.get(f"/api/v1/faces/{2**64}", headers=read),
        "no crop": client.get("/api/v1/faces/999999/crop", headers=read),
        "gallery": client.get("/api/v1/gallery", headers=read),
        "recognize": client.post("/api/v1/recognize", files=photo(spare), headers=read),
        "recognize not a photo": client.post("/api/v1/recognize", files=photo(not_photo), headers=read),
        "recognize bad base64": client.post("/api/v1/recognize", json={"image_base64": "%%"}, headers=read),
        "explain": explained,
        "explain against nobody": client.post("/api/v1/explain", files=photo(spare), data={"against": "nobody"},
                                              headers=read),
        "explain not a photo": client.post("/api/v1/explain", files=photo(not_photo), headers=read),
        "report": client.get(explained.json()["report_url"], headers=read),
        "report json": client.get(explained.json()["files"]["json"], headers=read),
        "write refused": client.post("/api/v1/subjects", json={"name": "x"}, headers=read),
    }
    (service.gallery.folder / "index.faiss").write_bytes(b"not an index")  # a check problem naming the file
    answers["check"] = client.get("/api/v1/gallery/check", headers=read)
    answers.update({page: client.get(page, headers=read) for page in pages_of(client, hostile)})
    assert answers["check"].json()["ok"] is False and "index" in answers["check"].json()["problems"][0]
    assert answers["face id overflow"].status_code == 422
    assert explained.json()["query"] == spare.name and "gallery" not in explained.json()["details"]
    for what, r in answers.items():
        assert r.status_code < 500, (what, r.text)
        assert_no_paths(r, places, what)


def test_a_failed_page_change_redirects_without_a_server_path(client, hostile):
    token = logged_in(client, hostile)
    here = {"Origin": "http://testserver"}
    merged = client.post(f"/subjects/{enc(PAYLOADS[0])}/merge", data={"into": "nobody", "csrf_token": token},
                         headers=here, follow_redirects=False)
    assert merged.status_code == 303 and "?" not in merged.headers["location"]  # the error is in a cookie
    merged_page = client.get(merged.headers["location"])
    assert "nobody" in merged_page.text and 'class="error"' in merged_page.text
    deleted = client.post(f"/faces/{2**40}/delete", data={"csrf_token": token}, headers=here, follow_redirects=False)
    for r in (merged, deleted, merged_page, client.get(deleted.headers["location"])):
        assert_no_paths(r, private_places(client, hostile), r.url)


# -- in the real Chromium -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(hostile, tmp_path_factory, sample_photos):
    """The hostile gallery served by uvicorn, with a clusters folder of three other people (for /clusters)."""
    from facesearch.serve.app import create_app
    from facesearch.serve.service import Service

    root = tmp_path_factory.mktemp("live")
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    for person in sorted(p for p in sample_photos.iterdir() if p.is_dir())[5:8]:
        for f in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(f, unlabelled / f"{person.name}-{f.name}")
    run_cli("cluster", unlabelled, "--out", root / "clusters", "-c", hostile[1], "--eps", "0.25", "--min-size", "2")
    shutil.copytree(hostile[0] / "gallery", root / "gallery")
    service = Service(root / "gallery", checkpoint=hostile[1], clusters=root / "clusters")
    try:
        with serving(create_app(service)) as base:
            yield base, service
    finally:
        service.close()


class Watch:
    """Everything in a browser context that would show a payload ran: dialogs other than our confirmations,
    a request for the payloads' image "x", a CSP violation (escaping failed and only the policy stopped it),
    a page answered without the policy."""

    def __init__(self, context, base: str):
        self.confirms, self.problems, self.answer = [], [], False
        context.on("dialog", self.dialog)
        context.on("request", lambda r: r.url.rstrip("/").endswith("/x") and self.problems.append(f"fetched {r.url}"))
        context.on("console", lambda m: "Content Security Policy" in m.text and self.problems.append(m.text))
        context.on("response", lambda r: self.response(r, base))

    def dialog(self, d):
        if d.type == "confirm":
            self.confirms.append(d.message)
            d.accept() if self.answer else d.dismiss()
        else:
            self.problems.append(f"{d.type} dialog: {d.message}")
            d.dismiss()

    def response(self, r, base):
        if r.request.resource_type == "document" and r.url.startswith(base):
            csp = r.headers.get("content-security-policy", "")
            if "script-src 'self'" not in csp and "default-src 'none'" not in csp:
                self.problems.append(f"no policy on {r.url}")


def submit(page, selector: str) -> None:
    """Click what sends a form (or follows a link) and wait for the page it leads to."""
    with page.expect_navigation():
        page.click(selector)


def log_in(page, key: str, next_page: str = "/subjects") -> None:
    page.goto(f"/login?next={enc(next_page)}")
    page.fill("input[name=key]", key)
    submit(page, "form[action='/login'] button")


@pytest.mark.browser
@pytest.mark.slow
def test_no_stored_name_file_name_or_message_runs_script(chromium, live, hostile):
    base, service = live
    context = chromium.new_context(base_url=base)
    watch = Watch(context, base)
    page = context.new_page()
    log_in(page, hostile[3]["full"], "javascript:alert(1)")
    assert page.url == base + "/subjects"
    assert sorted(page.locator("li.subject .name").all_inner_texts()) == sorted(PAYLOADS)
    page.goto(f"/subjects?message={enc(PAYLOADS[1])}&error={enc(PAYLOADS[3])}")
    assert page.locator(".message, .error").count() == 0  # a page's messages are the server's, never the URL's
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    for i, name in enumerate(PAYLOADS):
        page.goto("/subjects")
        with page.expect_navigation():
            page.locator("li.subject a", has_text=name).first.click()  # the link built from the name
        assert page.inner_text("#subject-name") == name
        # the button whose handler ran the name (issue 27); its confirmation dismissed: nothing happens
        page.click("section.actions form[action$='/delete'] button")
        assert not watch.problems, watch.problems
        page.locator("li.face form button").first.click()
        assert page.inner_text("#subject-name") == name and page.locator("li.face").count() == 2
        if i < len(FILE_PAYLOADS):  # a photo with a hostile file name: the message names it
            page.set_input_files("input[name=photo]", {"name": FILE_PAYLOADS[i], "mimeType": "image/jpeg",
                                                       "buffer": hostile[2][name][2].read_bytes()})
            submit(page, "form[enctype] button")
            assert FILE_PAYLOADS[i] in page.inner_text("main")
    expected = {f"Delete {n} and every face?" for n in PAYLOADS}
    assert set(watch.confirms) >= expected, watch.confirms
    assert all(c in expected or re.fullmatch(r"Delete face \d+ of (.*)\? Its crop .*", c).group(1) in PAYLOADS
               for c in watch.confirms), watch.confirms
    # who is this: the names drawn and linked by who.js, the hostile file name in its status
    page.goto("/who")
    page.set_input_files("#photo", {"name": FILE_PAYLOADS[1], "mimeType": "image/jpeg",
                                    "buffer": hostile[2][PAYLOADS[3]][0].read_bytes()})  # an enrolled photo
    page.wait_for_selector("#status[data-done]")
    assert PAYLOADS[3] in page.locator("#faces a").all_inner_texts()
    assert FILE_PAYLOADS[1] in page.inner_text("#status")
    with page.expect_navigation():
        page.locator("#faces a", has_text=PAYLOADS[3]).first.click()
    assert page.inner_text("#subject-name") == PAYLOADS[3]
    # rename and merge through the forms, a cluster named by a payload, the gallery page
    page.fill("#rename input[name=new_name]", PAYLOADS[3] + "2")
    submit(page, "#rename button")
    assert page.inner_text("#subject-name") == PAYLOADS[3] + "2"
    page.select_option("select[name=into]", PAYLOADS[1])
    watch.answer = True  # the merge's question, naming both, accepted
    submit(page, "form[action$='/merge'] button")
    watch.answer = False
    assert watch.confirms[-1].startswith(f"Merge {PAYLOADS[3]}2 into {PAYLOADS[1]}? ")
    assert page.inner_text("#subject-name") == PAYLOADS[1]
    page.goto("/clusters")
    page.locator("section.cluster input[name=new_name]").first.fill(PAYLOADS[3])
    submit(page, "section.cluster button")
    assert page.locator("section.cluster .cluster-name").first.inner_text() == PAYLOADS[3]
    page.goto("/gallery?check=1")
    # accepted at last: the subject goes, its name in the message
    page.goto(f"/subjects/{enc(PAYLOADS[2])}")
    watch.answer = True
    submit(page, "section.actions form[action$='/delete'] button")
    assert f"deleted {PAYLOADS[2]}" in page.inner_text(".message")
    assert PAYLOADS[2] not in [i.name for i in service.gallery.identities()]
    assert not watch.problems, watch.problems
    context.close()


ATTACK = """<!doctype html><title>win a prize</title>
<form id="f" method="post" action="{target}/subjects/{name}/delete"><input name="csrf_token" value="{forged}"></form>
<script>
const photo = new FormData();
photo.append("photo", new Blob([new Uint8Array({jpeg})], {{type: "image/jpeg"}}), "me.jpg");
Promise.allSettled([
  fetch("{target}/api/v1/subjects/{name}/faces", {{method: "POST", mode: "no-cors", credentials: "include",
        body: photo}}),
  fetch("{target}/api/v1/subjects", {{method: "POST", mode: "no-cors", credentials: "include",
        headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{name: "Mallory"}})}}),
]).then(() => document.getElementById("f").submit());
</script>"""


@contextlib.contextmanager
def attacker(host: str, page_html: str):
    """A page on another port (or host) of this machine, served by a plain HTTP server."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/attack.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_a_page_of_another_port_or_origin_changes_nothing(chromium, live, hostile):
    base, service = live
    name = PAYLOADS[0]
    before = ([i.name for i in service.gallery.identities()], service.gallery.stats()["faces"])
    jpeg = list(hostile[2][name][2].read_bytes())
    context = chromium.new_context(base_url=base)
    page = context.new_page()
    log_in(page, hostile[3]["full"])
    assert page.url == base + "/subjects"
    token = page.evaluate("document.querySelector('meta[name=csrf-token]')?.content || ''")
    for host in ("127.0.0.1", "localhost"):  # another port of this host (same site: the cookie goes), another site
        for forged in ("", token):  # even with the victim's token, if the attacker knew it: the origin is foreign
            html = ATTACK.format(target=base, name=enc(name), forged=forged, jpeg=jpeg)
            with attacker(host, html) as url:
                with page.expect_navigation(url=lambda u: u.startswith(base)):
                    page.goto(url)
                page.wait_for_load_state()
                refused = "Not allowed" in page.content() and "refused:" in page.content()  # the error page
                assert refused or "/login" in page.url, (host, page.url, page.content()[:300])
    after = ([i.name for i in service.gallery.identities()], service.gallery.stats()["faces"])
    assert after == before
    context.close()
