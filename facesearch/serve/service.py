"""What ``facesearch serve`` holds while it runs: one gallery, one model, and the library calls the API makes.

Everything here is the CLI's own code path (``search.who``, ``gallery.enroll``, ``explain``): the service adds
no second implementation, only uploads (size and pixel limits, stored by content hash so ``gallery reembed``
still finds every enrolled photo) and the sharing of one gallery between request threads
(``Gallery(concurrent=True)``: the index is updated on a copy while searches run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from facesearch.data.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, load_image
from facesearch.gallery.db import sqlite_path

UPLOADS = "uploads"  # inside the gallery folder: photos enrolled through the service, named by their sha256


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int = 20 * 1024 * 1024  # an upload's size
    max_pixels: int = MAX_PIXELS  # a photo's width x height (refused from the header, before decoding), as the CLI's


class UploadError(ValueError):
    """An upload the service refuses; ``status`` is prepare's vocabulary (``too_large``, ``not_an_image``...)."""

    def __init__(self, status: str, reason: str, http_status: int = 422):
        super().__init__(reason)
        self.status, self.reason, self.http_status = status, reason, http_status


class Service:
    """The gallery and model of one ``facesearch serve`` process.

    Args:
        gallery: the gallery folder (it must exist: the service never creates one).
        db_url: its database, when not the folder's SQLite file.
        checkpoint: the model (default: the one the gallery was built with, else the shipped base model).
        device: where the model runs.
        limits: upload limits.
        compute_slots: recognitions and enrollments computing at once (default: ``default_compute_slots()``).
        clusters: a ``facesearch cluster`` output whose groups the pages show and name (enrolling them here).
        read_only: serve the gallery for reading only (None: exactly when the server may not write to it).
    """

    def __init__(self, gallery: str | os.PathLike, db_url: str | None = None, checkpoint=None,
                 device: str = "cpu", limits: Limits = Limits(), compute_slots: int | None = None,
                 clusters: str | os.PathLike | None = None, read_only: bool | None = None):
        from facesearch.checkpoint import load_checkpoint
        from facesearch.embed import Embedder, gallery_model
        from facesearch.gallery import Gallery

        # an existing empty folder starts a gallery (people are enrolled through the API); a missing one is refused
        self.gallery = Gallery(gallery, db_url, create=Path(gallery).is_dir(), read_only=read_only, concurrent=True)
        try:
            self.loaded = load_checkpoint(gallery_model(checkpoint, self.gallery), device)
            self.embedder = Embedder.for_queries(self.loaded, device)
            if self.gallery.model_fingerprint is not None:
                self.gallery.check_model(self.embedder.fingerprint)
        except Exception:
            self.gallery.close()
            raise
        self.device, self.limits = device, limits
        self.clusters = Path(clusters) if clusters is not None else None
        if self.clusters is not None:
            from facesearch.cluster import load

            load(self.clusters)  # a folder that is not one is refused at start, not on the first page
        self._editing_clusters = threading.Lock()  # one edit of the clusters folder at a time
        self.scratch = Path(tempfile.mkdtemp(prefix="facesearch-serve-"))  # explain reports
        self._explaining = threading.Semaphore(1)  # one explanation at a time: each uses every core for seconds
        # Detection and the model use every core already (torch's intra-op threads): more requests computing at
        # once only share them worse. The others wait their turn (bench/serve.py measured the difference).
        self._computing = threading.Semaphore(compute_slots or default_compute_slots())

    def close(self) -> None:
        self.gallery.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- what callers may see -----------------------------------------------------------------------

    def public(self, text: str) -> str:
        """``text`` (an error message, a check's problem) with the server's own paths replaced by what they are:
        no answer, page or redirect shows a caller where the server keeps its files."""
        places = {str(self.scratch): "the server's scratch folder", str(self.gallery.folder): "the gallery"}
        if self.clusters is not None:
            places[str(self.clusters.resolve())] = "the clusters folder"
            places[str(self.clusters)] = "the clusters folder"
        sqlite = sqlite_path(self.gallery.url)
        if sqlite is not None:
            places[str(sqlite)] = places[str(sqlite.resolve())] = "the gallery's database"
        for path in sorted(places, key=len, reverse=True):  # the longest first: a file before its folder
            what = places[path]
            text = text.replace(path + os.sep, what + "'s ").replace(path, what)
        return text

    def public_stats(self) -> dict:
        """``Gallery.stats`` without the server's paths (the database as its kind, the model as "base" or its
        checkpoint's file name), with the threshold recognitions use and where it comes from."""
        from facesearch.search import answer_threshold

        stats = self.gallery.stats()
        stats.pop("folder", None)
        stats["threshold"], stats["threshold_source"] = answer_threshold(self.gallery, self.loaded)
        stats["database"] = make_url(self.gallery.url).get_backend_name()  # sqlite, postgresql
        source = stats.get("model_source")
        if source and source != "base":
            stats["model_source"] = Path(source).name
        return stats

    def public_check(self):
        """``Gallery.check`` with its problems told without the server's paths."""
        from facesearch.gallery import CheckReport

        report = self.gallery.check()
        return CheckReport([self.public(p) for p in report.problems], report.details)

    def warm_up(self) -> None:
        """Run detection and the model once, so the first request does not pay for lazy initialisation."""
        from PIL import Image

        list(self.embedder.faces_of([Image.new("RGB", (160, 160), (128, 128, 128))]))

    # -- uploads ------------------------------------------------------------------------------------

    def read_photo(self, data: bytes, filename: str | None):
        """An upload checked (its size) and decoded from memory (RGB), or UploadError with prepare's status and
        reason."""
        if len(data) > self.limits.max_bytes:
            raise UploadError("too_large", f"{len(data)} bytes, more than the {self.limits.max_bytes} allowed", 413)
        if not data:
            raise UploadError("not_an_image", "empty upload (0 bytes)")
        try:
            return load_image(data, max_pixels=self.limits.max_pixels)
        except ImageError as e:
            raise UploadError(e.status, f"{filename or 'upload'}: {e.reason}") from None

    # -- recognize ----------------------------------------------------------------------------------

    def recognize(self, data: bytes, filename: str | None, top_k: int, threshold: float | None) -> dict:
        """``who`` on one uploaded photo: every face, its top-k identities, timings in milliseconds."""
        from facesearch.search import who

        t0 = time.perf_counter()
        image = self.read_photo(data, filename)
        t1 = time.perf_counter()
        with self._computing:
            t_start = time.perf_counter()
            result = who(self.gallery, self.embedder, image, top_k=top_k, threshold=threshold).to_dict()
        t2 = time.perf_counter()
        result["photo"] = filename
        result["width"], result["height"] = image.size
        result["timings_ms"] = {"decode": round(1000 * (t1 - t0), 1), "queued": round(1000 * (t_start - t1), 1),
                                "detect_embed_search": round(1000 * (t2 - t_start), 1), "total": round(1000 * (t2 - t0), 1)}
        return result

    # -- enroll -------------------------------------------------------------------------------------

    def add_photo(self, name: str, data: bytes, filename: str | None, largest: bool = False):
        """Enroll one uploaded photo under ``name`` (``gallery.enroll``); the photo is kept in the gallery's
        ``uploads/`` so that ``gallery reembed`` can cut its face again. Returns the EnrollOutcome."""
        from facesearch.embed import Decoded
        from facesearch.gallery.enroll import enroll

        image = self.read_photo(data, filename)  # a bad upload is refused before anything is stored
        kept = self._keep(data, filename)
        with self._computing:  # the photo is decoded once: enroll takes it as it is
            outcome = enroll(self.gallery, self.embedder, [(Decoded(kept, image), name)], largest=largest)[0]
        if outcome.status != "enrolled":
            self.gallery.discard_upload(kept)  # a refused or duplicate upload: kept only while a face refers to it
        return outcome

    def remove_face(self, face_id: int):
        """``Gallery.remove_face``, and the uploaded photo it came from when nothing else refers to it."""
        info = self.gallery.remove_face(face_id)
        self._forget_uploads([info])
        return info

    def remove_subject(self, name: str) -> int:
        """``Gallery.remove`` (the subject, its faces and crops), and the uploaded photos they came from."""
        faces = self.gallery.identity(name).faces
        removed = self.gallery.remove(name)
        self._forget_uploads(faces)
        return removed

    def _forget_uploads(self, faces) -> None:
        folder = (self.gallery.folder / UPLOADS).resolve()
        for face in faces:
            source = Path(face.source_path) if face.source_path else None
            if source is not None and source.parent == folder and face.source_sha256 \
                    and self.gallery.enrolled_as(face.source_sha256) is None:
                source.unlink(missing_ok=True)

    def _keep(self, data: bytes, filename: str | None) -> Path:
        """The upload as ``uploads/<sha256><suffix>`` in the gallery folder (written whole, then renamed)."""
        folder = self.gallery.folder / UPLOADS
        folder.mkdir(mode=0o700, exist_ok=True)
        suffix = Path(filename or "").suffix.lower()
        kept = folder / f"{hashlib.sha256(data).hexdigest()}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
        if not kept.exists():
            tmp = kept.with_name(f".{kept.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, kept)
        return kept

    # -- clusters -----------------------------------------------------------------------------------

    def cluster_groups(self) -> dict:
        """The clusters folder's summary (``Clusters.summary``) with each group's face ids, closest first."""
        from facesearch.cluster import load

        c = load(self._clusters_folder())
        summary = c.summary()
        members = c.groups()
        for g in summary["group_list"]:
            g["face_ids"] = [r.face_id for r in members[g["group"]]]
        return summary

    def name_cluster(self, group: int, name: str) -> dict:
        """``cluster.name_group`` through ``cluster.edit``: the group's faces enrolled as ``name``."""
        from facesearch.cluster import edit, name_group

        with self._editing_clusters, self._computing:
            result, _ = edit(self._clusters_folder(), lambda c: name_group(c, group, name, self.gallery))
        return result

    def cluster_crop(self, face_id: int) -> Path | None:
        path = self._clusters_folder() / "crops" / f"{face_id}.jpg"
        return path if path.is_file() else None

    def _clusters_folder(self) -> Path:
        from facesearch.cluster import ClusterError

        if self.clusters is None:
            raise ClusterError("no clusters folder: start the service with --clusters DIR (a `facesearch cluster` output)")
        return self.clusters

    # -- explain ------------------------------------------------------------------------------------

    def explain(self, data: bytes, filename: str | None, against: str | None):
        """``explain_identification`` of the largest face of an uploaded photo, with the service's own gallery and
        embedder; returns (report id, Explanation). The report's files stay in the scratch folder, served under
        /explain/<id>/, until the service stops."""
        from facesearch.explain import explain_identification

        image = self.read_photo(data, filename)
        report = uuid.uuid4().hex
        with self._explaining:
            explanation = explain_identification(image, self.gallery, self.embedder,
                                                 self.scratch / "explain" / report, against=against,
                                                 name=filename or "upload")
        return report, self._publish(explanation)

    def _publish(self, explanation):
        """The explanation, its report.html and explanation.json without the server's paths (the gallery folder)."""
        import dataclasses
        import json

        explanation = dataclasses.replace(explanation, details={
            k: v for k, v in explanation.details.items() if k != "gallery"})
        page = explanation.files["report"]
        page.write_text(self.public(page.read_text(encoding="utf-8")), encoding="utf-8")
        numbers = explanation.files["json"]
        out = json.loads(numbers.read_text(encoding="utf-8"))
        out["details"].pop("gallery", None)
        out["files"] = {k: Path(v).name for k, v in out["files"].items()}
        numbers.write_text(json.dumps(out, indent=1), encoding="utf-8")
        return explanation

    def report_file(self, report: str, name: str) -> Path | None:
        """A file of an explanation this service made, or None (no such report, or a path outside it)."""
        if not report.isalnum():
            return None
        folder = (self.scratch / "explain" / report).resolve()
        path = (folder / name).resolve()
        return path if path.is_file() and path.parent == folder else None


def default_compute_slots() -> int:
    """As many requests computing at once as there are CPUs, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
