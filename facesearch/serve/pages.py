"""The web pages: server-rendered Jinja templates over the same ``Service`` and ``Gallery`` calls as the API.

Subjects (a thumbnail each), a subject (faces, rename, merge, delete, add a photo), "who is this" (drop a photo,
see it with boxes and names: a little plain JS posting to /api/v1/recognize), explanations, and the gallery
(stats, check, threshold). A form that fails comes back to its page with the reason.

No page runs inline script or inline event handlers (the Content-Security-Policy of ``guard`` forbids them):
the scripts are files under ``static/``, and what they need from the page travels in ``data-`` attributes.
Every form carries the session's CSRF token (``csrf_token``), checked with the request's origin by ``caller``.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from facesearch.gallery import GalleryError
from facesearch.search import answer_threshold
from facesearch.serve.app import KEY_COOKIE, PACKAGE, ApiError, Caller, FaceId, caller, writer
from facesearch.serve.guard import REPORT_CSP, same_origin, subject_name
from facesearch.serve.service import UploadError

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
templates.env.filters["q"] = lambda s: quote(str(s), safe="")
PAGE_SIZE = 60


def is_page(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


ERROR_TITLES = {400: "Refused", 403: "Not allowed", 404: "Not found", 409: "Refused", 413: "Too large",
                422: "Refused", 500: "Server error", 503: "Not available now", 507: "Out of space"}


def wants_page(request: Request) -> bool:
    """A browser asking for a page (not the API, not a program): its errors are answered as a page."""
    return is_page(request) and "text/html" in request.headers.get("accept", "")


def error_page(request: Request, http_status: int, reason: str) -> HTMLResponse:
    """An error told as a page of the site (the API's JSON error, for a person): the reason and the ways on."""
    return _render(request, "error.html", status_code=http_status, reason=reason,
                   title=ERROR_TITLES.get(http_status, "Refused"))


def _render(request: Request, name: str, who: Caller | None = None, status_code: int = 200, **context) -> HTMLResponse:
    service = request.app.state.service
    context.update(caller=who, message=request.query_params.get("message"), error=request.query_params.get("error"),
                   gallery_read_only=service.gallery.read_only,
                   can_write=who is not None and not who.read_only and not service.gallery.read_only)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _back(request: Request, path: str, **params) -> RedirectResponse:
    """Back to a page, with a message or an error told without the server's paths."""
    public = request.app.state.service.public
    query = urlencode({k: public(str(v)) for k, v in params.items() if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


def _act(request: Request, on_error: str, action) -> RedirectResponse:
    """Run a form's change: ``action()`` returns (page to show, message); a refusal comes back to ``on_error``
    with its reason."""
    try:
        page, message = action()
    except (GalleryError, UploadError) as e:
        return _back(request, on_error, error=str(e))
    return _back(request, page, message=message)


def _subject_url(name: str) -> str:
    return f"/subjects/{quote(name, safe='')}"


def _local(target: str) -> str:
    """A page of this server to go to after logging in (anything else: the subjects)."""
    local = target.startswith("/") and not target.startswith(("//", "/\\")) and target.isprintable()
    return target if local else "/subjects"


# -- login --------------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/subjects"):
    return _render(request, "login.html", next=_local(next))


@router.post("/login")
def login(request: Request, key: str = Form(...), next: str = Form("/subjects")):
    why = same_origin(request)  # no session yet: a form of another site must not log the browser in
    if why is not None:
        raise ApiError(403, "csrf", f"refused: {why}")
    info = request.app.state.service.gallery.check_key(key.strip())
    if info is None:
        return _render(request, "login.html", status_code=401, next=_local(next),
                       login_error="This key is not known to the gallery.")
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(KEY_COOKIE, key.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(who: Caller = Depends(caller)):
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(KEY_COOKIE)
    return response


@router.get("/")
def home():
    return RedirectResponse("/subjects", status_code=303)


# -- subjects -----------------------------------------------------------------------------------------


@router.get("/subjects")
def subjects_page(request: Request, page: int = 1, who: Caller = Depends(caller)):
    gallery = request.app.state.service.gallery
    everyone = gallery.identities()
    pages = max(1, -(-len(everyone) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = everyone[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    thumbs = {}
    for info in shown:  # a face per subject: the first enrolled one
        faces = gallery.identity(info.name).faces
        thumbs[info.name] = faces[0].id if faces else None
    return _render(request, "subjects.html", who, subjects=shown, thumbs=thumbs, page=page, pages=pages,
                   total=len(everyone))


@router.post("/subjects")
def create_subject(request: Request, name: str = Form(...), who: Caller = Depends(writer)):
    try:
        name = request.app.state.service.gallery.create_identity(name)
    except GalleryError as e:
        return _back(request, "/subjects", error=str(e))
    return _back(request, _subject_url(name), message=f"created {name}")


@router.get("/subjects/{name}")
def subject_page(request: Request, name: str, who: Caller = Depends(caller)):
    gallery = request.app.state.service.gallery
    info = gallery.identity(subject_name(name))
    others = [i.name for i in gallery.identities() if i.name != info.name]
    return _render(request, "subject.html", who, subject=info, others=others, url=_subject_url(info.name))


@router.post("/subjects/{name}/rename")
def rename_subject(request: Request, name: str, new_name: str = Form(...), who: Caller = Depends(writer)):
    gallery, name = request.app.state.service.gallery, subject_name(name)

    def rename():
        gallery.rename(name, new_name)
        renamed = gallery.identity(new_name).name
        return _subject_url(renamed), f"renamed {name} to {renamed}"

    return _act(request, _subject_url(name), rename)


@router.post("/subjects/{name}/merge")
def merge_subject(request: Request, name: str, into: str = Form(...), who: Caller = Depends(writer)):
    name = subject_name(name)

    def merge():
        moved = request.app.state.service.gallery.merge(name, into)
        return _subject_url(into), f"merged {name} into {into} ({moved} faces)"

    return _act(request, _subject_url(name), merge)


@router.post("/subjects/{name}/delete")
def delete_subject(request: Request, name: str, who: Caller = Depends(writer)):
    name = subject_name(name)

    def delete():
        return "/subjects", f"deleted {name} and its {request.app.state.service.remove_subject(name)} faces"

    return _act(request, _subject_url(name), delete)


@router.post("/subjects/{name}/faces")
async def add_face(request: Request, name: str, photo: UploadFile, who: Caller = Depends(writer)):
    service, name = request.app.state.service, subject_name(name)
    try:
        data = await photo.read(service.limits.max_bytes + 1)
        outcome = await run_in_threadpool(service.add_photo, name, data, photo.filename)
    except (GalleryError, UploadError) as e:
        return _back(request, _subject_url(name), error=str(e))
    if outcome.status != "enrolled":
        return _back(request, _subject_url(name), error=f"{photo.filename}: {outcome.reason or outcome.status}")
    return _back(request, _subject_url(name), message=f"{photo.filename}: enrolled as face {outcome.face_id}")


@router.post("/faces/{face_id}/delete")
def delete_face(request: Request, face_id: FaceId, who: Caller = Depends(writer)):
    def delete():
        face = request.app.state.service.remove_face(face_id)
        return _subject_url(face.identity), f"deleted face {face_id}"

    return _act(request, "/subjects", delete)


# -- who is this, explain, the gallery ----------------------------------------------------------------


@router.get("/who")
def who_page(request: Request, who: Caller = Depends(caller)):
    service = request.app.state.service
    threshold, source = answer_threshold(service.gallery, service.embedder.loaded)
    return _render(request, "who.html", who, threshold=threshold, calibrated=source == "calibrated",
                   threshold_source=source)


@router.get("/explain/{report}/{name}")
def explain_file(request: Request, report: str, name: str, who: Caller = Depends(caller)):
    path = request.app.state.service.report_file(report, name)
    if path is None:
        raise ApiError(404, "not_found", f"no explanation file {report}/{name} (reports last as long as the server)")
    # the report is one HTML file with inline CSS and data: images, and no script: its own, stricter policy
    return FileResponse(path, headers={"Content-Security-Policy": REPORT_CSP})


@router.get("/gallery")
def gallery_page(request: Request, check: bool = False, who: Caller = Depends(caller)):
    service = request.app.state.service
    report = service.public_check() if check else None
    return _render(request, "gallery.html", who, stats=service.public_stats(), report=report)


# -- clusters (facesearch cluster) --------------------------------------------------------------------


@router.get("/clusters")
def clusters_page(request: Request, who: Caller = Depends(caller)):
    service = request.app.state.service
    if service.clusters is None:
        return _render(request, "clusters.html", who, summary=None)
    return _render(request, "clusters.html", who, summary=service.cluster_groups())


@router.get("/clusters/crops/{face_id}")
def cluster_crop(request: Request, face_id: FaceId, who: Caller = Depends(caller)):
    path = request.app.state.service.cluster_crop(face_id)
    if path is None:
        raise ApiError(404, "not_found", f"no clustered face {face_id}")
    return FileResponse(path, media_type="image/jpeg")


@router.post("/clusters/{group}/name")
async def name_cluster(request: Request, group: int, name: str = Form(...), who: Caller = Depends(writer)):
    from facesearch.cluster import ClusterError

    try:
        result = await run_in_threadpool(request.app.state.service.name_cluster, group, name)
    except (ClusterError, GalleryError) as e:
        return _back(request, "/clusters", error=str(e))
    elsewhere = result["elsewhere"]
    named = len(result["duplicates"]) - sum(map(len, elsewhere.values()))
    skipped = (f", {named} already enrolled" if named else "") + "".join(
        f", {len(ids)} already enrolled as {holder}" for holder, ids in elsewhere.items())
    return _back(request, "/clusters",
                 message=f"group {group} named {name}: {result['enrolled']} faces enrolled{skipped}")
