"""What ``facesearch serve`` holds while it runs: one gallery, one model, and the library calls the API makes.

Everything here is the CLI's own code path (``search.who``, ``gallery.enroll``, ``explain``): the service adds
no second implementation, only uploads (size and pixel limits, stored by content hash so ``gallery reembed``
still finds every enrolled photo), the sharing of one gallery between request threads
(``Gallery(concurrent=True)``: the index is updated on a copy while searches run), and recognitions,
detections and verifications that wait for a compute slot computed as one batch (``batching``;
``search.who_images``, ``Embedder.faces_of``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy.engine import make_url

from facesearch.data.images import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, load_image
from facesearch.errors import BadInput
from facesearch.gallery.db import sqlite_path
from facesearch.serve.batching import Batcher

logger = logging.getLogger(__name__)

UPLOADS = "uploads"  # inside the gallery folder: photos enrolled through the service, named by their sha256
MAX_BATCH = 8  # recognitions computed together at most (bench/serve.py: docs/BENCHMARKS.md)


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int = 20 * 1024 * 1024  # an upload's size
    max_pixels: int = MAX_PIXELS  # a photo's width x height (refused from the header, before decoding), as the CLI's
    max_archive_bytes: int = 200 * 1024 * 1024  # a zip of calibration photos (``Service.calibrate``)
    max_archive_files: int = 20_000  # photos in it


class UploadError(BadInput):
    """An upload the service refuses; ``status`` is prepare's vocabulary (``too_large``, ``not_an_image``...)."""

    def __init__(self, status: str, reason: str, http_status: int = 422):
        super().__init__(reason)
        self.status, self.reason, self.http_status = status, reason, http_status


class ClusteringStopped(Exception):
    """A clustering started from the page, stopped because the service is closing (the folder stays as it was)."""


@dataclass
class ClusteringRun:
    """A clustering started from the clusters page, as the page follows it."""

    total: int  # photos to look at
    folders: int
    done: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    message: str = ""
    error: str = ""
    stopping: bool = False  # the service is closing: the run ends at its next photo

    @property
    def running(self) -> bool:
        return self.finished is None

    def advance(self, photos: int) -> None:
        """``cluster_folder``'s progress: counts the photos looked at, and stops the run once ``stopping``."""
        if self.stopping:
            raise ClusteringStopped
        self.done += photos

    def finish(self, message: str = "", error: str = "") -> None:
        self.message, self.error, self.finished = message, error, time.time()


class Service:
    """The gallery and model of one ``facesearch serve`` process.

    Args:
        gallery: the gallery folder (it must exist: the service never creates one).
        db_url: its database, when not the folder's SQLite file.
        checkpoint: the model (default: the one the gallery was built with, else the shipped base model).
        device: where the model runs.
        limits: upload limits.
        compute_slots: requests computing at once (default: ``default_compute_slots()``).
        max_batch: recognitions (detections, verifications) waiting for a compute slot that are computed together,
            at most (default ``MAX_BATCH``; 1: each alone). See ``facesearch.serve.batching``.
        clusters: a ``facesearch cluster`` output whose groups the pages show and name (enrolling them here).
        read_only: serve the gallery for reading only (None: exactly when the server may not write to it).
    """

    def __init__(self, gallery: str | os.PathLike, db_url: str | None = None, checkpoint=None,
                 device: str = "cpu", limits: Limits = Limits(), compute_slots: int | None = None,
                 clusters: str | os.PathLike | None = None, read_only: bool | None = None,
                 max_batch: int | None = None):
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
        self._starting = threading.Lock()
        self.clustering: ClusteringRun | None = None  # the last clustering started from the page
        self._clustering_thread: threading.Thread | None = None  # its thread: close() waits for it
        self._closing = False  # close() was called: no clustering starts any more
        self.scratch = Path(tempfile.mkdtemp(prefix="facesearch-serve-"))  # explain reports, calibration archives
        self._explaining = threading.Semaphore(1)  # one explanation at a time: each uses every core for seconds
        self._calibrating = threading.Lock()  # one calibration at a time: it embeds hundreds of photos
        # Detection and the model use every core already (torch's intra-op threads): more requests computing at
        # once only share them worse. The others wait their turn (bench/serve.py measured the difference).
        self._computing = threading.Semaphore(compute_slots or default_compute_slots())
        # Recognitions that wait for a slot are detected, embedded and searched together when one frees; so are
        # detections (detected together) and verifications (their photos detected and embedded together).
        self._recognizing = Batcher(self._recognize_batch, self._computing, max_batch or MAX_BATCH)
        self._finding = Batcher(self._faces_batch, self._computing, max_batch or MAX_BATCH)

    def close(self) -> None:
        """Stop a clustering started from the clusters page at its next photo (the clusters folder stays as its
        last save left it; one already saving finishes its save), wait for it, then close the gallery and delete
        the scratch folder. No clustering starts once this is called."""
        with self._starting:
            self._closing = True
            thread = self._clustering_thread
        if thread is not None and thread.is_alive():
            run = self.clustering
            run.stopping = True
            logger.info("stopping the clustering started from the clusters page (%d of %d photos looked at; the "
                        "clusters folder stays as it was)", run.done, run.total)
            thread.join()
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

    # -- recognize, detect, verify ------------------------------------------------------------------

    def recognize(self, data: bytes, filename: str | None, top_k: int, threshold: float | None,
                  det_prob_threshold: float | None = None, limit: int | None = None) -> dict:
        """``who`` on one uploaded photo: every face (``keep_faces``: the sure and large enough), its top-k
        identities, timings in milliseconds. Computed together with the recognitions (of the same top_k and
        threshold) waiting beside it for a compute slot: ``queued`` is the wait, ``detect_embed_search`` the batch's
        time."""
        t0 = time.perf_counter()
        image = self.read_photo(data, filename)
        t1 = time.perf_counter()
        t_start, result = self._recognizing.submit((top_k, threshold), image)  # computed with those waiting beside it
        t2 = time.perf_counter()
        result["photo"] = filename
        result["width"], result["height"] = image.size
        result["faces"] = keep_faces(result["faces"], det_prob_threshold, limit)
        result["timings_ms"] = {"decode": round(1000 * (t1 - t0), 1), "queued": round(1000 * (t_start - t1), 1),
                                "detect_embed_search": round(1000 * (t2 - t_start), 1), "total": round(1000 * (t2 - t0), 1)}
        return result

    def _recognize_batch(self, rule: tuple[int, float | None], images: list) -> list[tuple[float, dict]]:
        """``who_images`` on the photos of recognitions waiting with the same (top_k, threshold); per photo, when
        the batch started computing and its answer."""
        from facesearch.search import who_images

        started = time.perf_counter()
        top_k, threshold = rule
        return [(started, r.to_dict()) for r in who_images(self.gallery, self.embedder, images, top_k, threshold)]

    def detect(self, data: bytes, filename: str | None, det_prob_threshold: float | None = None,
               limit: int | None = None) -> dict:
        """The faces of one uploaded photo as the query side finds them (the embedder's detector): box, five
        landmarks and detector probability each; no embedding, no gallery search."""
        image = self.read_photo(data, filename)
        found = [f.face for f in self._finding.submit(False, [image])[0]]  # with the detections waiting beside it
        faces = [{"box": [round(float(v), 1) for v in f.box], "det_prob": round(float(f.prob), 4),
                  "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in f.landmarks]} for f in found]
        return {"photo": filename, "width": image.size[0], "height": image.size[1],
                "faces": keep_faces(faces, det_prob_threshold, limit)}

    def _faces_batch(self, embed: bool, requests: list[list]) -> list[list[list]]:
        """Every face (``PhotoFace``: embedded when ``embed``) of the photos of detections (``embed`` False) or
        verifications (True) waiting together for a compute slot: one detection pass (and one forward pass) for all
        their photos. Per request, per photo, its faces. ``max_batch`` counts requests, as for recognitions: a batch
        of verifications may hold twice as many photos."""
        photos = [image for images in requests for image in images]
        found = iter(self.embedder.faces_of(photos, select="all", batch_size=max(1, len(photos)), embed=embed))
        return [[next(found).faces for _ in images] for images in requests]

    def verify(self, photo: tuple[bytes, str | None], other: tuple[bytes, str | None] | None, subject: str | None,
               threshold: float | None = None) -> dict:
        """Are two faces the same person? The largest face of ``photo`` against the largest of ``other``, or
        against ``subject``'s enrolled faces (scored by the best one, as recognize scores an identity; exact
        cosines to each of its stored embeddings, whatever the index). The verdict is at ``threshold``, else at the
        gallery's (``search.answer_threshold``), and the answer says which."""
        from facesearch.search import answer_threshold

        if (other is None) == (subject is None):
            raise UploadError("invalid_request", "send a second photo (field 'photo2') or a subject's name "
                                                 "(field 'subject'), not both")
        if threshold is not None and not -1.0 <= threshold <= 1.0:  # also refuses nan
            raise UploadError("invalid_request", f"threshold {threshold}: a cosine similarity lies between -1 and 1")
        info = self.gallery.identity(subject) if subject is not None else None  # a missing subject: 404 before work
        if info is not None and info.n_faces == 0:
            raise UploadError("no_face", f"subject {info.name!r} has no enrolled face to compare with")
        images = [(self.read_photo(data, name), name) for data, name in ([photo] if other is None else [photo, other])]
        self.gallery.check_model(self.embedder.fingerprint)
        found = self._finding.submit(True, [image for image, _ in images])  # with the verifications beside it
        faces = [_largest(faces, name or "upload") for faces, (_, name) in zip(found, images)]
        answer = {"faces": [face for face, _ in faces]}
        if info is not None:
            face_id, similarity = self._best_face_of(info, faces[0][1])
            answer.update(subject=info.name, face_id=face_id)
        else:
            similarity = float(np.dot(faces[0][1], faces[1][1]))
        if threshold is None:
            threshold, source = answer_threshold(self.gallery, self.loaded)
        else:
            source = "given"
        similarity = round(similarity, 6)
        return {"similarity": similarity, "same": similarity >= threshold, "threshold": threshold,
                "threshold_source": source, **answer}

    def _best_face_of(self, info, embedding) -> tuple[int, float]:
        """The face of subject ``info`` most similar to ``embedding``, and its cosine similarity: exact, against each
        of the subject's stored embeddings (``Gallery.score_identity``), whatever index the gallery searches with."""
        hits = self.gallery.score_identity(info.name, embedding)
        if not hits:  # its faces were removed since it was looked up
            raise UploadError("no_face", f"subject {info.name!r} has no enrolled face to compare with")
        return hits[0].face_id, float(hits[0].similarity)

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

    def add_face_at(self, name: str, data: bytes, filename: str | None, box: tuple[float, float, float, float]):
        """Enroll the face at ``box`` (x1, y1, x2, y2: as ``recognize`` answered it) of an uploaded photo under
        ``name``: the face's region, with a margin of its own size around it, is enrolled as a photo of its largest
        face. Returns the EnrollOutcome (an UploadError for a box outside the photo)."""
        import io

        image = self.read_photo(data, filename)
        x1, y1, x2, y2 = box
        if x2 <= 0 or y2 <= 0 or x1 >= image.width or y1 >= image.height:
            raise UploadError("invalid_request", f"box {list(box)} lies outside the {image.width}x{image.height} photo")
        w, h = x2 - x1, y2 - y1
        region = image.crop((max(0, round(x1 - w)), max(0, round(y1 - h)),
                             min(image.width, round(x2 + w)), min(image.height, round(y2 + h))))
        encoded = io.BytesIO()
        region.save(encoded, format="PNG")
        stem = Path(filename or "upload").stem
        return self.add_photo(name, encoded.getvalue(), f"{stem}-face-{round(x1)}-{round(y1)}.png", largest=True)

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

    def remove_faces(self, name: str) -> int:
        """``Gallery.remove_faces`` (every face of a subject, its vectors and crops, in one change; the subject
        stays), and the uploaded photos they came from. Returns the faces removed."""
        faces = self.gallery.identity(name).faces
        removed = self.gallery.remove_faces(name)
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

    # -- calibrate ----------------------------------------------------------------------------------

    def calibrate(self, archive: bytes, filename: str | None, target_fpir: float | None):
        """``calibrate_gallery`` (the CLI's ``calibrate``) on a zip of ``<person>/<photo>`` images: people
        enrolled in the gallery and people who are not. Stores and returns the Calibration; the stored record
        names the archive, not the scratch folder it was unpacked into."""
        from facesearch.evaluation.calibrate import calibrate_gallery

        shown = filename or "archive"
        if len(archive) > self.limits.max_archive_bytes:
            raise UploadError("too_large", f"{shown}: {len(archive)} bytes, more than the "
                                           f"{self.limits.max_archive_bytes} allowed", 413)
        folder = self.scratch / f"calibrate-{uuid.uuid4().hex}"
        try:
            unpack_photos(archive, shown, folder, self.limits)
            with self._calibrating, self._computing:
                try:
                    calibration = calibrate_gallery(self.gallery, self.embedder, folder, target_fpir=target_fpir)
                except BadInput as e:  # too few photos of strangers (or of enrolled people), nobody enrolled
                    raise UploadError("cannot_calibrate", self.public(str(e)).replace(str(folder), shown)) from None
                value, meta = self.gallery.threshold()
                self.gallery.set_threshold(value, {**(meta or {}), "data_dir": f"uploaded archive {shown}"})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return calibration

    # -- clusters -----------------------------------------------------------------------------------

    def cluster_groups(self) -> dict:
        """The clusters folder's summary (``Clusters.summary``) with each group's face ids, closest first, whom its
        faces look like in the gallery now (``looks_like``: (name, best similarity) or None), and the ids of the
        faces in no group (``unclustered_ids``)."""
        from facesearch.cluster import UNCLUSTERED, load

        c = load(self._clusters_folder())
        summary = c.summary()
        members = c.groups()
        looks_like = self._looks_like(c, members)
        for g in summary["group_list"]:
            g["face_ids"] = [r.face_id for r in members[g["group"]]]
            g["looks_like"] = looks_like.get(g["group"])
        summary["unclustered_ids"] = [r.face_id for r in c.rows if r.group == UNCLUSTERED]
        return summary

    def _looks_like(self, c, members: dict) -> dict[int, tuple[str, float]]:
        """Per group: the identity most of its faces are named as by ``who`` against the gallery as it is now (at
        the threshold recognitions use), with the best similarity to it. Nothing for a clustering made with
        another model (its vectors are not comparable) or an empty gallery."""
        from collections import Counter

        from facesearch.search import aggregate, answer_threshold

        if c.model.get("fingerprint") != self.embedder.fingerprint or not len(c.vectors) \
                or not self.gallery.stats()["faces"]:
            return {}
        threshold, _ = answer_threshold(self.gallery, self.loaded)
        with self._computing:
            hits = self.gallery.search(c.vectors, k=10)
        index = {r.face_id: i for i, r in enumerate(c.rows)}
        out = {}
        for group, rows in members.items():
            named = [top[0] for top in (aggregate(hits[index[r.face_id]], 1) for r in rows)
                     if top and top[0].similarity >= threshold]
            if named:
                name = Counter(m.name for m in named).most_common(1)[0][0]
                out[group] = (name, max(m.similarity for m in named if m.name == name))
        return out

    def name_cluster(self, group: int, name: str) -> dict:
        """``cluster.name_group`` through ``cluster.edit``: the group's faces enrolled as ``name``."""
        from facesearch.cluster import ClusterError, edit, name_group

        if self.clustering is not None and self.clustering.running:
            raise ClusterError("a clustering is running: name the groups when it has finished")
        with self._editing_clusters, self._computing:
            result, _ = edit(self._clusters_folder(), lambda c: name_group(c, group, name, self.gallery))
        return result

    def start_clustering(self) -> ClusteringRun:
        """Cluster again, in a thread of its own, the folders the clusters folder's photos are in (``cluster_folder``:
        new photos there join, groups keep their ids and names). ClusterError when one runs already, or no folder
        of the clustering is left."""
        from facesearch.cluster import ClusterError, load
        from facesearch.data.images import list_photos

        folder = self._clusters_folder()
        with self._starting:
            if self._closing:
                raise ClusterError("the service is stopping: start the clustering when it runs again")
            if self.clustering is not None and self.clustering.running:
                raise ClusterError("a clustering is running already: the clusters page follows it")
            folders = sorted({Path(r.photo).parent for r in load(folder).rows if Path(r.photo).parent.is_dir()})
            photos = list_photos(folders)
            if not photos:
                raise ClusterError("none of the clustering's photo folders is left: new photos need a new clustering "
                                   "(the server's administrator clusters them into a clusters folder)")
            self.clustering = ClusteringRun(total=len(photos), folders=len(folders))
            self._clustering_thread = threading.Thread(target=self._cluster, args=(photos, self.clustering),
                                                       daemon=True, name="facesearch-cluster")
            self._clustering_thread.start()
        return self.clustering

    def _cluster(self, photos: list[Path], run: ClusteringRun) -> None:
        from facesearch.cluster import cluster_folder

        try:
            with self._editing_clusters, self._computing:
                report = cluster_folder(photos, self.clusters, self.embedder, gallery=self.gallery,
                                        progress=run.advance)
            summary = report.clusters.summary()
            run.finish(f"clustered {len(photos)} photos ({report.new_photos} new): {summary['groups']} groups, "
                       f"{summary['unclustered']} faces in none" + (f"; {len(report.failures)} photos without a "
                                                                    "usable face" if report.failures else ""))
        except ClusteringStopped:
            run.finish(error=f"stopped when the service stopped, after {run.done} of {run.total} photos; the groups "
                             "are as before it started")
        except Exception as e:  # told on the page; the folder is as the last save left it
            logger.exception("clustering from the page failed")
            run.finish(error=self.public(str(e)) or type(e).__name__)

    def cluster_crop(self, face_id: int) -> Path | None:
        path = self._clusters_folder() / "crops" / f"{face_id}.jpg"
        return path if path.is_file() else None

    def _clusters_folder(self) -> Path:
        from facesearch.cluster import ClusterNotFound

        if self.clusters is None:
            raise ClusterNotFound("no clusters folder: this service was started without one")
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


def unpack_photos(archive: bytes, shown: str, folder: Path, limits: Limits) -> int:
    """Unpack the images of a zip of ``[top/]<person>/<photo>`` into ``folder/<person>/<photo>``; returns how
    many. Only each member's last two path parts are used (no member lands outside ``folder``); members that
    are not images (by suffix) are skipped; the archive's declared sizes and the bytes actually read are both
    held to the limits (a zip bomb is refused, not unpacked). UploadError when it is not a zip or holds no
    photos."""
    import io
    import zipfile

    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise UploadError("not_an_archive", f"{shown}: not a zip archive (zip the folder of <person>/<photo> "
                                            "images)") from None
    photos = [(m, PurePosixPath(m.filename.replace("\\", "/")).parts[-2:]) for m in zf.infolist() if not m.is_dir()]
    photos = [(m, parts) for m, parts in photos if len(parts) == 2 and all(_plain(p) for p in parts)
              and PurePosixPath(parts[1]).suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        raise UploadError("no_photos", f"{shown}: no <person>/<photo> images in the archive")
    if len(photos) > limits.max_archive_files:
        raise UploadError("too_large", f"{shown}: {len(photos)} photos, more than the {limits.max_archive_files} "
                                       "allowed")
    budget = 4 * limits.max_archive_bytes  # unpacked; photos barely compress
    if sum(m.file_size for m, _ in photos) > budget:
        raise UploadError("too_large", f"{shown}: unpacks to more than {budget} bytes")
    for m, (person, name) in photos:
        (folder / person).mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(m) as src:
                data = src.read(min(m.file_size, limits.max_bytes) + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError) as e:  # damaged, encrypted
            raise UploadError("not_an_archive", f"{shown}: {m.filename}: cannot be unpacked ({e})") from None
        if len(data) > limits.max_bytes:
            raise UploadError("too_large", f"{shown}: {m.filename} has more than the {limits.max_bytes} bytes a "
                                           "photo may have")
        (folder / person / name).write_bytes(data)
    return len(photos)


def _plain(part: str) -> bool:
    """A path part that names a file or folder inside its parent (not the root, ``..``, a drive, a control)."""
    return part not in ("", ".", "..") and not set(part) & set("/\\:") and part.isprintable()


def keep_faces(faces: list[dict], det_prob_threshold: float | None, limit: int | None) -> list[dict]:
    """The faces of an answer worth listing: those the detector is at least ``det_prob_threshold`` sure of
    (None: all it found), and of them the ``limit`` largest, largest first (None: all, in the detector's order).
    Each face is a dict with ``box`` (x1, y1, x2, y2) and ``det_prob``."""
    if det_prob_threshold is not None:
        faces = [f for f in faces if f["det_prob"] >= det_prob_threshold]
    if limit is not None:
        faces = sorted(faces, key=lambda f: -(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))[:limit]
    return faces


def _largest(faces, photo: str) -> tuple[dict, np.ndarray]:
    """The largest of a photo's embedded faces (``PhotoFace``) as an answer's face, and its embedding; UploadError
    when there is none."""
    if not faces:
        raise UploadError("no_face", f"{photo}: no face detected")
    chosen = max(faces, key=lambda f: (f.face.area, f.face.prob))  # select_face's "largest"
    return {"photo": photo, "box": [round(float(v), 1) for v in chosen.face.box],
            "det_prob": round(float(chosen.face.prob), 4), "faces_in_photo": len(faces)}, chosen.embedding


def default_compute_slots() -> int:
    """As many requests computing at once as there are CPUs, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
