"""The JSON API, version 1: recognize, subjects and their faces, explain, the gallery's stats and check.

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

from facesearch.serve.auth import ApiError, Caller, FaceId, caller, writer
from facesearch.serve.guard import subject_name
from facesearch.serve.service import UploadError

router = APIRouter(prefix="/api/v1")


def _service(request: Request):
    return request.app.state.service


def _subject(name: str = Path_(description="the subject's name, percent-encoded (a `/` as `%2F`)")) -> str:
    return subject_name(name)


Subject = Annotated[str, Depends(_subject)]


async def read_photo(request: Request, field: str = "photo") -> tuple[bytes, str | None, dict]:
    """The photo of a request: a multipart file field ``photo``, or JSON ``{"image_base64": ..., "filename": ...}``;
    with the other form or JSON fields. Reads at most the size limit (plus one byte, to tell it was exceeded);
    the whole body was limited while it streamed in (``guard.BodyLimit``)."""
    limit = _service(request).limits.max_bytes
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        try:
            upload = form.get(field)
            if upload is None or isinstance(upload, str):
                raise UploadError("missing_photo", f"send the photo as the multipart file field {field!r}")
            data = await upload.read(limit + 1)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            return data, upload.filename, fields
        finally:
            await form.close()  # the uploaded files' spooled temp files (FastAPI closes only the forms it parses)
    if kind.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise UploadError("invalid_request", "the body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("image_base64"), str):
            raise UploadError("missing_photo", 'send {"image_base64": "..."} (or a multipart file field "photo")')
        try:
            data = base64.b64decode(body["image_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise UploadError("not_an_image", "image_base64 is not valid base64") from None
        return data, body.get("filename"), {k: v for k, v in body.items() if k != "image_base64"}
    raise UploadError("missing_photo", "send the photo as multipart/form-data (field 'photo') or JSON "
                                       "{\"image_base64\": ...}", 415)


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


# -- recognize ----------------------------------------------------------------------------------------


@router.post("/recognize", summary="Every face of a photo, with its top-k identities or 'unknown'")
async def recognize(request: Request, who: Caller = Depends(caller),
                    top_k: int = Query(5, ge=1, le=100, description="identities listed per face"),
                    threshold: Optional[float] = Query(None, ge=-1, le=1, description=(
                        "cosine similarity needed to name a face (default: the gallery's calibrated one)"))) -> dict:
    data, filename, _ = await read_photo(request)
    result = await run_in_threadpool(_service(request).recognize, data, filename, top_k, threshold)
    for face in result["faces"]:  # the server's file paths are not the caller's business: links instead
        for match in face["matches"]:
            match.pop("source_path", None)
            match["crop_url"] = f"/api/v1/faces/{match['face_id']}/crop" if match.pop("crop_path", None) else None
    return result


# -- subjects -----------------------------------------------------------------------------------------


class NewSubject(BaseModel):
    name: str = Field(description="the person's name (NFC, trimmed, at most 200 characters)")


class Rename(BaseModel):
    name: str = Field(description="the new name")


class Merge(BaseModel):
    into: str = Field(description="the subject that receives every face")
    create: bool = Field(False, description="create `into` when it does not exist")


@router.get("/subjects", summary="The subjects, by name, a page at a time")
def list_subjects(request: Request, who: Caller = Depends(caller), offset: int = Query(0, ge=0),
                  limit: int = Query(50, ge=1, le=1000)) -> dict:
    everyone = _service(request).gallery.identities()
    return {"total": len(everyone), "offset": offset, "limit": limit,
            "subjects": [subject_json(i) for i in everyone[offset:offset + limit]]}


@router.post("/subjects", status_code=201, summary="Create a subject with no faces yet")
def create_subject(request: Request, body: NewSubject, who: Caller = Depends(writer)) -> dict:
    name = _service(request).gallery.create_identity(body.name)
    return subject_json(_service(request).gallery.identity(name))


@router.get("/subjects/{name}/faces", summary="A subject's faces")
def subject_faces(request: Request, name: Subject, who: Caller = Depends(caller)) -> dict:
    info = _service(request).gallery.identity(name)
    return {"subject": info.name, "faces": [face_json(f) for f in info.faces]}


@router.post("/subjects/{name}/faces", status_code=201, summary="Enroll an uploaded photo of a subject")
async def add_face(request: Request, name: Subject, who: Caller = Depends(writer)) -> JSONResponse:
    service = _service(request)
    await run_in_threadpool(service.gallery.identity, name)  # 404 for a subject that does not exist
    data, filename, fields = await read_photo(request)
    largest = str(fields.get("largest", "")).lower() in ("1", "true", "yes", "on")
    outcome = await run_in_threadpool(service.add_photo, name, data, filename, largest)
    body = {"status": outcome.status, "reason": outcome.reason, "face_id": outcome.face_id,
            "faces_in_photo": outcome.n_faces, "enrolled_as": outcome.enrolled_as}
    if outcome.status == "enrolled":
        return JSONResponse(body, status_code=201)
    code = 409 if outcome.status == "duplicate" else 422
    return JSONResponse({"error": {"status": outcome.status, "reason": outcome.reason or outcome.status}, **body},
                        status_code=code)


@router.post("/subjects/{name}/merge", summary="Move every face of a subject into another; delete it")
def merge_subject(request: Request, name: Subject, body: Merge, who: Caller = Depends(writer)) -> dict:
    moved = _service(request).gallery.merge(name, body.into, create=body.create)
    return {"merged": name, "into": body.into, "moved_faces": moved}


@router.get("/subjects/{name}", summary="One subject and its faces")
def get_subject(request: Request, name: Subject, who: Caller = Depends(caller)) -> dict:
    return subject_json(_service(request).gallery.identity(name), faces=True)


@router.patch("/subjects/{name}", summary="Rename a subject")
def rename_subject(request: Request, name: Subject, body: Rename, who: Caller = Depends(writer)) -> dict:
    gallery = _service(request).gallery
    gallery.rename(name, body.name)
    return subject_json(gallery.identity(body.name))


@router.delete("/subjects/{name}", summary="Delete a subject, its faces and their crops")
def delete_subject(request: Request, name: Subject, who: Caller = Depends(writer)) -> dict:
    return {"deleted": name, "removed_faces": _service(request).remove_subject(name)}


# -- faces --------------------------------------------------------------------------------------------


@router.get("/faces/{face_id}", summary="One enrolled face")
def get_face(request: Request, face_id: FaceId, who: Caller = Depends(caller)) -> dict:
    return face_json(_service(request).gallery.face(face_id))


@router.get("/faces/{face_id}/crop", summary="The face's stored crop (JPEG)", response_class=FileResponse)
def face_crop(request: Request, face_id: FaceId, who: Caller = Depends(caller)):
    face = _service(request).gallery.face(face_id)
    if face.crop_path is None or not face.crop_path.is_file():
        raise ApiError(404, "not_found", f"face {face_id} has no stored crop")
    return FileResponse(face.crop_path, media_type="image/jpeg")


@router.delete("/faces/{face_id}", summary="Delete one face (its subject stays)")
def delete_face(request: Request, face_id: FaceId, who: Caller = Depends(writer)) -> dict:
    face = _service(request).remove_face(face_id)
    return {"deleted": face_id, "subject": face.identity}


# -- explain ------------------------------------------------------------------------------------------


@router.post("/explain", summary="Which layers drive the identification of a photo's largest face")
async def explain(request: Request, who: Caller = Depends(caller)) -> dict:
    from facesearch.explain import ExplainError

    data, filename, fields = await read_photo(request)
    against = fields.get("against") or None
    try:
        report, explanation = await run_in_threadpool(_service(request).explain, data, filename, against)
    except ExplainError as e:
        raise ApiError(422, "cannot_explain", str(e)) from None
    out = explanation.to_dict()
    out["query"] = filename
    out["files"] = {k: f"/explain/{report}/{v.name}" for k, v in explanation.files.items()}
    out["report_url"] = f"/explain/{report}/{explanation.files['report'].name}"
    return out


# -- the gallery --------------------------------------------------------------------------------------


@router.get("/gallery", summary="Counts, model, threshold and index of the gallery")
def gallery_stats(request: Request, who: Caller = Depends(caller)) -> dict:
    return _service(request).public_stats()  # the server's paths are not the caller's business


@router.get("/gallery/check", summary="Compare the index, the crops and the embeddings with the database")
def gallery_check(request: Request, who: Caller = Depends(caller)) -> dict:
    report = _service(request).public_check()
    return {"ok": report.ok, "problems": report.problems, "details": report.details}
