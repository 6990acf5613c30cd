"""The JSON API, version 1: recognize, detect, verify, subjects and their faces, explain, calibrate, the gallery's
stats and check.

Handlers are thin: the work is ``Service`` (which calls ``search.who``, ``gallery.enroll``, ``explain``) and
``Gallery``; slow calls run in the thread pool so the event loop keeps answering.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends
from fastapi import Path as Path_
from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from facesearch.gallery import IdentityNotFound
from facesearch.serve import schemas
from facesearch.serve.auth import ApiError, Caller, FaceId, caller, writer
from facesearch.serve.guard import subject_name
from facesearch.serve.schemas import base64_field
from facesearch.serve.service import UploadError

router = APIRouter(prefix="/api/v1", responses=schemas.ERRORS)


def _service(request: Request):
    return request.app.state.service


def _subject(name: str = Path_(description="the subject's name, percent-encoded (a `/` as `%2F`)")) -> str:
    return subject_name(name)


Subject = Annotated[str, Depends(_subject)]


async def read_upload(request: Request, files: tuple[str, ...] = ("photo",), required: int = 1,
                      limit: int | None = None, as_json: bool = True
                      ) -> tuple[list[tuple[bytes, str | None] | None], dict]:
    """The photos of a request: multipart file fields (``files``), or JSON with each as base64 (``photo`` as
    ``image_base64`` with ``filename``, ``photo2`` as ``image2_base64`` with ``filename2``); with the other form or
    JSON fields.
    The first ``required`` photos must be there (a missing later one is None). Reads at most ``limit`` bytes of
    each (default: a photo's size limit), plus one, to tell it was exceeded; the whole body was limited while it
    streamed in (``guard.BodyLimit``). ``as_json=False``: multipart only."""
    limit = limit or _service(request).limits.max_bytes
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        try:
            photos = []
            for n, field in enumerate(files):
                upload = form.get(field)
                if upload is None or isinstance(upload, str):
                    if n < required:
                        raise UploadError("missing_photo", f"send the photo as the multipart file field {field!r}")
                    photos.append(None)
                else:
                    photos.append((await upload.read(limit + 1), upload.filename))
            return photos, {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()  # the uploaded files' spooled temp files (FastAPI closes only the forms it parses)
    if kind.startswith("application/json") and as_json:
        try:
            body = await request.json()
        except ValueError:
            raise UploadError("invalid_request", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise UploadError("missing_photo", 'send {"image_base64": "..."} (or a multipart file field "photo")')
        photos = [_base64_photo(body, field, n < required) for n, field in enumerate(files)]
        encoded = {base64_field(f) for f in files}
        return photos, {k: v for k, v in body.items() if k not in encoded}
    if not as_json:
        raise UploadError("missing_photo", f"send the file as multipart/form-data (field {files[0]!r})", 415)
    raise UploadError("missing_photo", "send the photo as multipart/form-data (field 'photo') or JSON "
                                       "{\"image_base64\": ...}", 415)


def _base64_photo(body: dict, field: str, required: bool) -> tuple[bytes, str | None] | None:
    key = base64_field(field)
    if not isinstance(body.get(key), str):
        if required:
            raise UploadError("missing_photo", f'send {{"{key}": "..."}} (or a multipart file field "{field}")')
        return None
    try:
        data = base64.b64decode(body[key], validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("not_an_image", f"{key} is not valid base64") from None
    name = body.get("filename" if field == "photo" else f"filename{field[len('photo'):]}")
    return data, name if isinstance(name, str) else None


async def read_photo(request: Request) -> tuple[bytes, str | None, dict]:
    """The one photo of a request (``read_upload``): its bytes, its file name and the other fields."""
    photos, fields = await read_upload(request)
    data, filename = photos[0]
    return data, filename, fields


def face_json(face) -> dict[str, Any]:
    return {"id": face.id, "subject": face.identity, "box": face.box, "det_prob": face.det_prob,
            "source_sha256": face.source_sha256, "created_at": face.created_at.isoformat(),
            "crop_url": f"/api/v1/faces/{face.id}/crop" if face.crop_path else None}


def subject_json(info, faces: bool = False) -> dict[str, Any]:
    out = {"name": info.name, "faces": info.n_faces, "created_at": info.created_at.isoformat(),
           "updated_at": info.updated_at.isoformat()}
    if faces:
        out["face_list"] = [face_json(f) for f in info.faces]
    return out


# -- recognize, detect, verify ------------------------------------------------------------------------

DetProb = Annotated[Optional[float], Query(ge=0, le=1, description=(
    "list only faces the detector is at least this sure of (0 to 1; default: every face it finds)"))]
FaceLimit = Annotated[Optional[int], Query(ge=1, le=1000, description=(
    "list at most this many faces, the largest first (default: all, in the detector's order)"))]
Threshold = Annotated[Optional[float], Query(ge=-1, le=1, description=(
    "cosine similarity needed to name a face (default: the gallery's, as threshold_source says)"))]
PHOTO = {"photo": "the photo (JPEG, PNG, WebP, TIFF...)"}


@router.post("/recognize", summary="Every face of a photo, with its top-k identities or 'unknown'",
             response_model=schemas.Recognized, openapi_extra=schemas.photo_body(PHOTO))
async def recognize(request: Request, who: Caller = Depends(caller),
                    top_k: int = Query(5, ge=1, le=100, description="identities listed per face"),
                    threshold: Threshold = None, det_prob_threshold: DetProb = None, limit: FaceLimit = None) -> dict:
    data, filename, _ = await read_photo(request)
    result = await run_in_threadpool(_service(request).recognize, data, filename, top_k, threshold,
                                     det_prob_threshold, limit)
    for face in result["faces"]:  # the server's file paths are not the caller's business: links instead
        for match in face["matches"]:
            match.pop("source_path", None)
            match["crop_url"] = f"/api/v1/faces/{match['face_id']}/crop" if match.pop("crop_path", None) else None
    return result


@router.post("/detect", summary="Every face of a photo: box, landmarks, detector probability (no search)",
             response_model=schemas.Detected, openapi_extra=schemas.photo_body(PHOTO))
async def detect(request: Request, who: Caller = Depends(caller), det_prob_threshold: DetProb = None,
                 limit: FaceLimit = None) -> dict:
    data, filename, _ = await read_photo(request)
    return await run_in_threadpool(_service(request).detect, data, filename, det_prob_threshold, limit)


@router.post("/verify", summary="Is it the same person? Two photos, or a photo and a subject",
             response_model=schemas.Verified, openapi_extra=schemas.photo_body(
                 {**PHOTO, "photo2": "the other photo (or give subject)"},
                 {"subject": {"type": "string", "description": "compare with this subject's faces instead"}}))
async def verify(request: Request, who: Caller = Depends(caller), threshold: Annotated[Optional[float], Query(
        ge=-1, le=1, description="similarity from which the faces are the same person (default: the gallery's, as "
                                 "threshold_source says)")] = None) -> dict:
    """The largest face of each photo is compared; against a subject, its most similar enrolled face."""
    (photo, other), fields = await read_upload(request, ("photo", "photo2"), required=1)
    subject = fields.get("subject")
    subject = subject if isinstance(subject, str) and subject else None
    return await run_in_threadpool(_service(request).verify, photo, other, subject, threshold)


# -- subjects -----------------------------------------------------------------------------------------


class NewSubject(BaseModel):
    name: str = Field(description="the person's name (NFC, trimmed, at most 200 characters)")


class Rename(BaseModel):
    name: str = Field(description="the new name")


def _page(page, offset: int, limit: int, name: str, to_json) -> dict:
    """A ``Gallery`` page as the API answers lists: the total, where the page starts, its size, its rows."""
    return {"total": page.total, "offset": offset, "limit": limit, name: [to_json(r) for r in page.items]}


class Merge(BaseModel):
    into: str = Field(description="the subject that receives every face")
    create: bool = Field(False, description="create `into` when it does not exist")


@router.get("/subjects", summary="The subjects, by name, a page at a time", response_model=schemas.SubjectPage)
def list_subjects(request: Request, who: Caller = Depends(caller), offset: int = Query(0, ge=0),
                  limit: int = Query(50, ge=1, le=1000)) -> dict:
    return _page(_service(request).gallery.identity_page(offset, limit), offset, limit, "subjects", subject_json)


@router.post("/subjects", status_code=201, summary="Create a subject with no faces yet",
             response_model=schemas.Subject)
def create_subject(request: Request, body: NewSubject, who: Caller = Depends(writer)) -> dict:
    name = _service(request).gallery.create_identity(body.name)
    return subject_json(_service(request).gallery.identity(name))


@router.get("/subjects/{name}/faces", summary="A subject's faces", response_model=schemas.SubjectFaces)
def subject_faces(request: Request, name: Subject, who: Caller = Depends(caller)) -> dict:
    info = _service(request).gallery.identity(name)
    return {"subject": info.name, "faces": [face_json(f) for f in info.faces]}


@router.post("/subjects/{name}/faces", status_code=201, summary="Enroll an uploaded photo of a subject",
             response_model=schemas.Enrolled, responses={409: {"model": schemas.Enrolled, "description": (
                 "the photo is enrolled already")}},
             openapi_extra=schemas.photo_body(PHOTO, {"largest": {"type": "boolean", "description": (
                 "as the query parameter")}}))
async def add_face(request: Request, name: Subject, who: Caller = Depends(writer), largest: bool = Query(
        False, description="in a photo of several people, enroll the largest face (else the photo is refused)")
                   ) -> JSONResponse:
    service = _service(request)
    await run_in_threadpool(service.gallery.identity, name)  # 404 for a subject that does not exist
    data, filename, fields = await read_photo(request)
    largest = largest or str(fields.get("largest", "")).lower() in ("1", "true", "yes", "on")
    outcome = await run_in_threadpool(service.add_photo, name, data, filename, largest)
    reason = enrol_reason(outcome, filename or "upload")
    body = {"status": outcome.status, "reason": reason, "face_id": outcome.face_id,
            "faces_in_photo": outcome.n_faces, "enrolled_as": outcome.enrolled_as}
    if outcome.status == "enrolled":
        return JSONResponse(body, status_code=201)
    code = 409 if outcome.status == "duplicate" else 422
    return JSONResponse({"error": {"status": outcome.status, "reason": reason or outcome.status}, **body},
                        status_code=code)


def enrol_reason(outcome, photo: str) -> str | None:
    """An enrolment's reason in the API's words: a group photo is told how to enroll its largest face here."""
    if outcome.status == "several_faces":
        return f"{photo}: {outcome.n_faces} faces in the photo; send largest=true to enroll the largest one"
    if outcome.status != "enrolled" and outcome.reason:
        return outcome.reason if outcome.reason.startswith(photo) else f"{photo}: {outcome.reason}"
    return outcome.reason


@router.delete("/subjects/{name}/faces", summary="Delete every face of a subject (the subject stays)",
               response_model=schemas.FacesDeleted)
def delete_subject_faces(request: Request, name: Subject, who: Caller = Depends(writer)) -> dict:
    service = _service(request)
    return {"subject": service.gallery.identity(name).name, "removed_faces": service.remove_faces(name)}


@router.post("/subjects/{name}/merge", summary="Move every face of a subject into another; delete it",
             response_model=schemas.Merged)
def merge_subject(request: Request, name: Subject, body: Merge, who: Caller = Depends(writer)) -> dict:
    gallery = _service(request).gallery
    if not body.create:  # a missing target told in the API's words (the field `create`)
        gallery.identity(name)  # a missing subject first: 404 naming it
        try:
            gallery.identity(body.into)
        except IdentityNotFound:
            raise ApiError(404, "not_found", f"no subject named {body.into!r} to merge {name!r} into: send "
                                             f'"create": true to merge into a new subject, or rename {name!r}'
                           ) from None
    moved = gallery.merge(name, body.into, create=body.create)
    return {"merged": name, "into": body.into, "moved_faces": moved}


@router.get("/subjects/{name}", summary="One subject and its faces", response_model=schemas.SubjectWithFaces)
def get_subject(request: Request, name: Subject, who: Caller = Depends(caller)) -> dict:
    return subject_json(_service(request).gallery.identity(name), faces=True)


@router.patch("/subjects/{name}", summary="Rename a subject", response_model=schemas.Subject)
def rename_subject(request: Request, name: Subject, body: Rename, who: Caller = Depends(writer)) -> dict:
    gallery = _service(request).gallery
    gallery.rename(name, body.name)
    return subject_json(gallery.identity(body.name))


@router.delete("/subjects/{name}", summary="Delete a subject, its faces and their crops",
               response_model=schemas.SubjectDeleted)
def delete_subject(request: Request, name: Subject, who: Caller = Depends(writer)) -> dict:
    return {"deleted": name, "removed_faces": _service(request).remove_subject(name)}


# -- faces --------------------------------------------------------------------------------------------


@router.get("/faces", summary="Every enrolled face, by id, a page at a time", response_model=schemas.FacePage)
def list_faces(request: Request, who: Caller = Depends(caller), offset: int = Query(0, ge=0),
               limit: int = Query(50, ge=1, le=1000)) -> dict:
    return _page(_service(request).gallery.face_page(offset, limit), offset, limit, "faces", face_json)


@router.get("/faces/{face_id}", summary="One enrolled face", response_model=schemas.StoredFace)
def get_face(request: Request, face_id: FaceId, who: Caller = Depends(caller)) -> dict:
    return face_json(_service(request).gallery.face(face_id))


@router.get("/faces/{face_id}/crop", summary="The face's stored crop (JPEG)", response_class=FileResponse)
def face_crop(request: Request, face_id: FaceId, who: Caller = Depends(caller)):
    face = _service(request).gallery.face(face_id)
    if face.crop_path is None or not face.crop_path.is_file():
        raise ApiError(404, "not_found", f"face {face_id} has no stored crop")
    return FileResponse(face.crop_path, media_type="image/jpeg")


@router.delete("/faces/{face_id}", summary="Delete one face (its subject stays)", response_model=schemas.FaceDeleted)
def delete_face(request: Request, face_id: FaceId, who: Caller = Depends(writer)) -> dict:
    face = _service(request).remove_face(face_id)
    return {"deleted": face_id, "subject": face.identity}


# -- explain ------------------------------------------------------------------------------------------


@router.post("/explain", summary="Which layers drive the identification of a photo's largest face",
             response_model=schemas.Explained, openapi_extra=schemas.photo_body(PHOTO, {"against": {
                 "type": "string", "description": "explain the similarity to this subject instead"}}))
async def explain(request: Request, who: Caller = Depends(caller)) -> dict:
    data, filename, fields = await read_photo(request)
    against = fields.get("against") or None
    report, explanation = await run_in_threadpool(_service(request).explain, data, filename, against)
    out = explanation.to_dict()
    out["query"] = filename
    out["files"] = {k: f"/explain/{report}/{v.name}" for k, v in explanation.files.items()}
    out["report_url"] = f"/explain/{report}/{explanation.files['report'].name}"
    return out


# -- calibrate ----------------------------------------------------------------------------------------


@router.post("/calibrate", summary="Set the gallery's unknown-threshold from photos of enrolled people and strangers",
             response_model=schemas.Calibrated, openapi_extra=schemas.archive_body())
async def calibrate(request: Request, who: Caller = Depends(writer), fpir: Optional[float] = Query(
        None, gt=0, lt=1, description="target share of strangers given a name (default 0.01)"),
                    balanced: bool = Query(False, description=(
                        "instead of fpir: the threshold naming as many strangers as it refuses enrolled people"))
                    ) -> dict:
    """As `facesearch calibrate`: the archive's folders named like an enrolled subject are that person's photos,
    any other folder a stranger's; photos enrolled already are skipped. Takes as long as embedding them all."""
    from facesearch.evaluation.calibrate import DEFAULT_FPIR

    if balanced and fpir is not None:
        raise ApiError(422, "invalid_request", "give fpir or balanced=true, not both")
    service = _service(request)
    (archive,), _ = await read_upload(request, ("photos",), limit=service.limits.max_archive_bytes, as_json=False)
    target = None if balanced else (DEFAULT_FPIR if fpir is None else fpir)
    calibration = await run_in_threadpool(service.calibrate, archive[0], archive[1], target)
    return {**calibration.to_dict(), "threshold_source": "calibrated"}


# -- the gallery --------------------------------------------------------------------------------------


@router.get("/gallery", summary="Counts, model, threshold and index of the gallery",
            response_model=schemas.GalleryStats)
def gallery_stats(request: Request, who: Caller = Depends(caller)) -> dict:
    return _service(request).public_stats()  # the server's paths are not the caller's business


@router.get("/gallery/check", summary="Compare the index, the crops and the embeddings with the database",
            response_model=schemas.GalleryCheck)
def gallery_check(request: Request, who: Caller = Depends(caller)) -> dict:
    report = _service(request).public_check()
    return {"ok": report.ok, "problems": report.problems, "details": report.details}
