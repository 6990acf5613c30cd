"""The web pages: server-rendered Jinja templates over the same ``Service`` and ``Gallery`` calls as the API.

Subjects (a thumbnail each), a subject (faces, rename, merge, delete, add a photo), "who is this" (drop a photo,
see it with boxes and names: a little plain JS posting to /api/v1/recognize), explanations, and the gallery
(stats, check, threshold). A form that fails comes back to its page with the reason.

No page runs inline script or inline event handlers (the Content-Security-Policy of ``guard`` forbids them):
the scripts are files under ``static/``, and what they need from the page travels in ``data-`` attributes.
Every form carries the session's CSRF token (``csrf_token``), checked with the request's origin by ``caller``.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from facesearch.cluster import ClusterError
from facesearch.gallery import GalleryError
from facesearch.gallery.identities import clean_name
from facesearch.gallery.store import PAGE_HAND_SET
from facesearch.search import answer_threshold
from facesearch.serve.auth import KEY_COOKIE, ApiError, Caller, FaceId, caller, writer
from facesearch.serve.guard import (FLASH_COOKIE, FLASH_SECONDS, REPORT_CSP, flash_value, read_flash, same_origin,
                                    subject_name)
from facesearch.serve.remedies import reason
from facesearch.serve.service import UploadError

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
templates.env.filters["q"] = lambda s: quote(str(s), safe="")
PAGE_SIZE = 60
BACK_FROM_REPORT = ("<main><p><a href='/who'>&larr; Who is this?</a> &middot; <a href='/subjects'>Subjects</a> "
                    "&middot; (this report lasts as long as the server)</p>")


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
    """A page; the message a form's change left for it (``_back``) is shown once, then forgotten."""
    service = request.app.state.service
    flash = read_flash(request.app.state.csrf_secret, request.cookies.get(FLASH_COOKIE))
    context.update(caller=who, message=flash.get("message"), error=flash.get("error"),
                   gallery_read_only=service.gallery.read_only,
                   can_write=who is not None and not who.read_only and not service.gallery.read_only)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE)
    return response


def _back(request: Request, path: str, **said) -> RedirectResponse:
    """Back to a page, with a message or an error (told without the server's paths) in a signed cookie that lives a
    minute: not in the URL, where a link could make the page say anything."""
    public = request.app.state.service.public
    response = RedirectResponse(path, status_code=303)
    said = {k: _shorten(public(str(v))) for k, v in said.items() if v}
    if said:
        response.set_cookie(FLASH_COOKIE, flash_value(request.app.state.csrf_secret, said), max_age=FLASH_SECONDS,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _shorten(text: str, most: int = 600) -> str:
    """At most ``most`` characters (a cookie holds 4 KB; a longer message is cut, saying so)."""
    return text if len(text) <= most else text[:most - 1] + "…"


def _act(request: Request, on_error: str, action) -> RedirectResponse:
    """Run a form's change: ``action()`` returns (page to show, message); a refusal comes back to ``on_error``
    with its reason."""
    try:
        page, message = action()
    except (GalleryError, UploadError) as e:
        return _back(request, on_error, error=reason(e))
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
        return _back(request, "/subjects", error=reason(e))
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
def merge_subject(request: Request, name: str, into: str = Form(""), who: Caller = Depends(writer)):
    name = subject_name(name)
    if not into:  # the form has no default target: a merge names the subject it goes into
        return _back(request, _subject_url(name), error=f"merging {name}: choose the subject to merge it into")

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
        return _back(request, _subject_url(name), error=reason(e))
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
    threshold, source = _threshold(service)
    return _render(request, "who.html", who, threshold=threshold, threshold_source=source,
                   people=[i.name for i in service.gallery.identities()])


@router.post("/who/faces")
async def assign_face(request: Request, photo: UploadFile, box: str = Form(...), person: str = Form(""),
                      new_name: str = Form(""), who: Caller = Depends(writer)) -> dict:
    """One face of a photo the Who page answered, enrolled as an existing person or a new one (the photo is sent
    again with the face's box; its region is enrolled). Answered as JSON for the page's script."""
    service = request.app.state.service
    try:
        name = _chosen_person(service.gallery, person, new_name)
    except Refused as e:
        raise ApiError(422, "invalid_request", str(e)) from None
    data = await photo.read(service.limits.max_bytes + 1)
    outcome = await run_in_threadpool(service.add_face_at, name, data, photo.filename, _box(box))
    if outcome.status != "enrolled":
        raise ApiError(409 if outcome.status == "duplicate" else 422, outcome.status,
                       f"{photo.filename}: {outcome.reason or outcome.status}")
    return {"subject": name, "face_id": outcome.face_id, "subject_url": _subject_url(name),
            "message": f"enrolled as face {outcome.face_id} of {name}"}


def _box(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2`` in the photo's pixels (as /api/v1/recognize gives a face's box)."""
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise ApiError(422, "invalid_request", f"box {text!r}: four numbers x1,y1,x2,y2") from None
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
        raise ApiError(422, "invalid_request", f"box {text!r}: x2 and y2 must lie beyond x1 and y1")
    return x1, y1, x2, y2


class Refused(ValueError):
    """A form's choice the page refuses (the message says why)."""


def _chosen_person(gallery, person: str, new_name: str) -> str:
    """The person a form chose: one of the list (``person``), or a new one (``new_name``) that is not an existing
    name in other letters (case, spaces): a new name never duplicates a person by accident."""
    person, new_name = person.strip(), new_name.strip()
    if bool(person) == bool(new_name):
        raise Refused("choose a person from the list, or type the name of a new one (one of the two)")
    names = {i.name for i in gallery.identities()}
    if person:
        if person not in names:
            raise Refused(f"{person!r} is not a subject of the gallery (renamed or deleted?): reload the page")
        return person
    try:
        name = clean_name(new_name)
    except GalleryError as e:
        raise Refused(str(e)) from None
    same = [n for n in names if " ".join(n.split()).casefold() == " ".join(name.split()).casefold()]
    if same:
        raise Refused(f"{new_name!r} is {same[0]!r} already: choose it from the list")
    return name


def _threshold(service) -> tuple[float, str]:
    """The threshold recognitions name faces at, and where it comes from, in words."""
    value, source = answer_threshold(service.gallery, service.loaded)
    if source == "manual":
        meta = service.gallery.threshold()[1] or {}
        by = f" by key {meta['by']}, {meta.get('date')}" if meta.get("by") else ""
        return value, f"{meta.get('method', 'set by hand')}{by}"
    return value, {"calibrated": "calibrated on photos of enrolled people and strangers",
                   "stored": "stored by an earlier facesearch, which did not record whether it was calibrated",
                   "model": "the model's, measured on people it never saw: not calibrated on yours"
                   }.get(source, "the default: not calibrated")


@router.get("/explain/{report}/{name}")
def explain_file(request: Request, report: str, name: str, who: Caller = Depends(caller)):
    path = request.app.state.service.report_file(report, name)
    if path is None:
        raise ApiError(404, "not_found", f"no explanation file {report}/{name} (reports last as long as the server)")
    # the report is one HTML file with inline CSS and data: images, and no script: its own, stricter policy
    headers = {"Content-Security-Policy": REPORT_CSP}
    if path.suffix != ".html":
        return FileResponse(path, headers=headers)
    page = path.read_text(encoding="utf-8").replace("<main>", BACK_FROM_REPORT, 1)  # written by the library: a way back
    return HTMLResponse(page, headers=headers)


@router.get("/gallery")
def gallery_page(request: Request, check: bool = False, who: Caller = Depends(caller)):
    service = request.app.state.service
    report = service.public_check() if check else None
    threshold, source = _threshold(service)
    return _render(request, "gallery.html", who, stats=service.public_stats(), report=report, threshold=threshold,
                   threshold_source=source)


@router.post("/gallery/threshold")
def set_threshold(request: Request, threshold: str = Form(...), who: Caller = Depends(writer)):
    """The threshold ``who`` names faces at, set by hand (recorded as such, with the key that set it)."""
    try:
        value = float(threshold)
    except ValueError:
        value = float("nan")
    if not -1.0 <= value <= 1.0:  # also refuses nan
        return _back(request, "/gallery", error=f"threshold {threshold!r}: a cosine similarity between -1 and 1")
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    request.app.state.service.gallery.set_threshold(value, {"method": PAGE_HAND_SET, "by": who.key_name, "date": when},
                                                    source="manual")
    return _back(request, "/gallery", message=f"threshold set to {value:.4f}: faces below it are answered unknown")


# -- clusters (facesearch cluster) --------------------------------------------------------------------


@router.get("/clusters")
def clusters_page(request: Request, who: Caller = Depends(caller)):
    service = request.app.state.service
    if service.clusters is None:
        return _render(request, "clusters.html", who, summary=None)
    return _render(request, "clusters.html", who, summary=service.cluster_groups(), run=service.clustering,
                   people=[i.name for i in service.gallery.identities()])


@router.post("/clusters/run")
def run_clustering(request: Request, who: Caller = Depends(writer)):
    """Cluster the photo folders again (new photos join), in the background: the clusters page follows it."""
    try:
        run = request.app.state.service.start_clustering()
    except ClusterError as e:
        return _back(request, "/clusters", error=reason(e))
    return _back(request, "/clusters", message=f"clustering {run.total} photos of {run.folders} folders: this page "
                                               "follows it")


@router.get("/clusters/crops/{face_id}")
def cluster_crop(request: Request, face_id: FaceId, who: Caller = Depends(caller)):
    path = request.app.state.service.cluster_crop(face_id)
    if path is None:
        raise ApiError(404, "not_found", f"no clustered face {face_id}")
    return FileResponse(path, media_type="image/jpeg")


@router.post("/clusters/{group}/name")
async def name_cluster(request: Request, group: int, person: str = Form(""), new_name: str = Form(""),
                       who: Caller = Depends(writer)):
    service = request.app.state.service
    try:
        name = _chosen_person(service.gallery, person, new_name)
        result = await run_in_threadpool(service.name_cluster, group, name)
    except (ClusterError, GalleryError, Refused) as e:
        return _back(request, "/clusters", error=reason(e))
    elsewhere = result["elsewhere"]
    named = len(result["duplicates"]) - sum(map(len, elsewhere.values()))
    skipped = (f", {named} already enrolled" if named else "") + "".join(
        f", {len(ids)} already enrolled as {holder}" for holder, ids in elsewhere.items())
    return _back(request, "/clusters",
                 message=f"group {group} named {name}: {result['enrolled']} faces enrolled{skipped}")
