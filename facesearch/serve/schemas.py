"""What the JSON API answers, and the photo uploads it reads, as the OpenAPI document describes them.

The answers are pydantic models (``response_model``): Swagger UI and generated clients see their fields. Each
allows fields it does not name (``extra="allow"``), so that the document never hides a field an answer carries.
The upload endpoints read their body themselves (a multipart file, or JSON with base64; ``api.read_upload``), so
their request bodies are described here (``photo_body``) for FastAPI's ``openapi_extra``.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

THRESHOLD_SOURCES = ("given (the request's); the gallery's own: calibrated (measured by calibrate), manual (set by "
                     "hand) or stored (by an earlier facesearch, how unrecorded); else model (what the model records) "
                     "or default")

def _open_schema(schema: dict) -> None:
    # Unnamed fields are allowed without saying so (JSON Schema's default): "additionalProperties: true" would
    # put "additionalProp1" into every example Swagger UI shows.
    schema.pop("additionalProperties", None)


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_open_schema)


class ErrorDetail(BaseModel):
    status: str = Field(description="a short machine-readable code: not_found, no_face, several_faces, ...")
    reason: str = Field(description="what went wrong, for people")


class ErrorAnswer(Answer):
    error: ErrorDetail


ERRORS = {code: {"model": ErrorAnswer, "description": what} for code, what in (
    (401, "no API key, or one the gallery does not know"),
    (403, "a read-only key (or gallery) asked for a change"),
    (404, "no such subject or face"),
    (413, "the upload is over the size limit"),
    (422, "a bad photo, no face, or a parameter out of range: `error.status` and `error.reason` say which"))}


# -- faces and subjects -------------------------------------------------------------------------------


class StoredFace(Answer):
    id: int
    subject: str
    box: Optional[list[float]] = Field(description="x1, y1, x2, y2 in the enrolled photo's pixels")
    det_prob: Optional[float] = Field(description="the detector's probability that this is a face")
    source_sha256: Optional[str] = Field(description="the enrolled photo's content hash")
    created_at: str
    crop_url: Optional[str] = Field(description="the stored crop (JPEG), or null")


class Subject(Answer):
    name: str
    faces: int = Field(description="number of enrolled faces")
    created_at: str
    updated_at: str


class SubjectWithFaces(Subject):
    face_list: list[StoredFace]


class SubjectPage(Answer):
    total: int
    offset: int
    limit: int
    subjects: list[Subject]


class FacePage(Answer):
    total: int
    offset: int
    limit: int
    faces: list[StoredFace]


class SubjectFaces(Answer):
    subject: str
    faces: list[StoredFace]


class Enrolled(Answer):
    status: str = Field(description="enrolled; refusals answer 409 (duplicate) or 422 (no_face, several_faces...)")
    reason: Optional[str]
    face_id: Optional[int]
    faces_in_photo: Optional[int]
    enrolled_as: Optional[str] = Field(description="the subject the photo is enrolled under (a duplicate's)")


class Merged(Answer):
    merged: str
    into: str
    moved_faces: int


class SubjectDeleted(Answer):
    deleted: str
    removed_faces: int


class FacesDeleted(Answer):
    subject: str
    removed_faces: int


class FaceDeleted(Answer):
    deleted: int
    subject: str


# -- recognize, detect, verify ------------------------------------------------------------------------


class Match(Answer):
    name: str
    similarity: float = Field(description="cosine similarity of the subject's best matching face")
    face_id: int
    crop_url: Optional[str]


class RecognizedFace(Answer):
    box: list[float] = Field(description="x1, y1, x2, y2 in photo pixels")
    det_prob: float
    identity: str = Field(description="the best match, or 'unknown' below the threshold")
    similarity: Optional[float] = Field(description="the best match's similarity (null: empty gallery)")
    matches: list[Match] = Field(description="the top_k subjects, best first")


class Recognized(Answer):
    photo: Optional[str]
    width: int
    height: int
    threshold: float
    threshold_calibrated: bool
    threshold_source: str = Field(description=THRESHOLD_SOURCES)
    faces: list[RecognizedFace]
    timings_ms: dict[str, float]


class DetectedFace(Answer):
    box: list[float] = Field(description="x1, y1, x2, y2 in photo pixels")
    det_prob: float = Field(description="the detector's probability that this is a face")
    landmarks: list[list[float]] = Field(description="(x, y) of the left eye, right eye, nose, left and right "
                                                     "mouth corner")


class Detected(Answer):
    photo: Optional[str]
    width: int
    height: int
    faces: list[DetectedFace]


class ComparedFace(Answer):
    photo: str
    box: list[float]
    det_prob: float
    faces_in_photo: int = Field(description="faces found in that photo; the largest is compared")


class Verified(Answer):
    similarity: float = Field(description="cosine similarity of the two faces (-1 to 1)")
    same: bool = Field(description="similarity >= threshold: the same person")
    threshold: float
    threshold_source: str = Field(description=THRESHOLD_SOURCES)
    faces: list[ComparedFace]
    subject: Optional[str] = Field(None, description="the subject compared with (its best face)")
    face_id: Optional[int] = Field(None, description="that subject's best matching face")


class Calibrated(Answer):
    threshold: float = Field(description="the stored threshold: recognize and verify name faces from it on")
    threshold_source: str
    rule: str = Field(description="fpir (a target share of strangers) or balanced")
    target_fpir: Optional[float]
    fpir: float = Field(description="share of the strangers' photos given a name at this threshold")
    dir: Optional[float] = Field(description="share of enrolled people's photos named correctly")
    accepted: Optional[float] = Field(description="share of enrolled people's photos given a name at all")
    n_mated: int = Field(description="photos of enrolled people")
    n_nonmated: int = Field(description="photos of strangers")


# -- explain, the gallery -----------------------------------------------------------------------------


class Explained(Answer):
    answer: Optional[str] = Field(None, description="who the model names")
    query: Optional[str] = None
    layers: list[dict[str, Any]] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    report_url: str


class GalleryStats(Answer):
    identities: int
    faces: int
    threshold: float
    threshold_source: str = Field(description=THRESHOLD_SOURCES)
    database: str


class GalleryCheck(Answer):
    ok: bool
    problems: list[str]
    details: dict[str, Any]


# -- uploads ------------------------------------------------------------------------------------------


def photo_body(files: dict[str, str], fields: dict[str, dict] | None = None, required: tuple[str, ...] = ("photo",)
               ) -> dict:
    """``openapi_extra`` of an endpoint reading photo uploads: a multipart form with the file fields ``files``
    (name: description) and the plain ``fields`` (name: JSON schema), or the same as JSON with each photo as
    base64 (``photo`` as ``image_base64``, ``photo2`` as ``image2_base64``)."""
    fields = fields or {}
    form = {name: {"type": "string", "format": "binary", "description": text} for name, text in files.items()}
    as_json = {base64_field(name): {"type": "string", "format": "byte", "description": f"{text}, base64"}
               for name, text in files.items()}
    for name in files:  # photo: filename, photo2: filename2
        as_json["filename" + name[len("photo"):]] = {"type": "string", "description": (
            f"{name}'s file name, as answers name it")}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {**form, **fields},
                                           "required": list(required)}},
        "application/json": {"schema": {"type": "object", "properties": {**as_json, **fields},
                                        "required": [base64_field(n) for n in required]}}}}}


def base64_field(field: str) -> str:
    """The JSON field carrying the multipart file field ``field`` as base64: photo → image_base64, photo2 →
    image2_base64."""
    return "image" + field[len("photo"):] + "_base64"


def archive_body() -> dict:
    """``openapi_extra`` of calibrate: a zip of ``<person>/<photo>`` images as the multipart file ``photos``."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["photos"], "properties": {"photos": {
            "type": "string", "format": "binary", "description": (
                "a zip of <person>/<photo> images: folders named like an enrolled subject are that person's "
                "photos, any other folder a stranger's (a 1 % target needs at least 100 photos of strangers)")}}}}}}}
