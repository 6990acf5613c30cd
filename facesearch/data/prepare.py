"""``prepare``: a folder of labelled photos → face crops on disk + a manifest row for every input file.

    RAW_DIR/<identity>/.../*.jpg  ──scan──▶ hash ──dedupe──▶ decode ──detect (batched MTCNN)──▶ select
    ──crop──▶ OUT_DIR/<identity>/<sha256[:16]>.jpg  +  OUT_DIR/manifest.csv  +  OUT_DIR/dataset.json

Several raw folders can go into one output (``prepare A B OUT``): identities are merged by folder name, each
row's path starts with its folder's name (``A/<identity>/x.jpg``), and a photo filed under the same identity
and file name in two folders (say an aligned and an uncropped copy of one photo) is one photo: its copies
all train and never reach an evaluation split, where they would match their own twin.

Every file gets exactly one row with a status (see ``manifest.STATUSES``) and a readable reason; no file
stops the run. Runs are resumable and idempotent: a file whose path, size, modification time and hash
match an earlier row is not decoded or detected again; a file changed in place is; removed files drop out.
Detection uses worker processes, each running single-threaded batched MTCNN (small convolutions scale
better across processes than across threads); on CUDA one process feeds the GPU.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from facesearch.data.detect import DetectedFace, FaceDetector, crop_face, select_face
from facesearch.data.images import ImageError, file_sha256, load_image
from facesearch.data.manifest import ManifestRow, read_manifest, read_settings, write_manifest, write_settings
from facesearch.errors import BadInput

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of photos just finished

# Statuses that record a finished look at a file's content (reusable while the file is unchanged).
_PROCESSED = ("ok", "no_face", "unreadable", "truncated", "not_an_image", "too_large", "too_small")
_CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class PrepareSettings:
    """How ``prepare`` cleans, crops and splits. Saved to ``dataset.json``."""

    size: int = 112  # crop side, px
    margin: float = 0.2  # context around the box, as a fraction of its longer side (half each side)
    align: bool = False  # 5-point similarity alignment instead of a plain box crop
    select: str = "largest"  # which face of a group photo: "largest" or "center"
    seed: int = 0  # split assignment
    val: float = 0.1  # fraction of each identity's photos for validation
    test: float = 0.1  # ... and for test
    min_photos: int = 5  # identities with fewer ok photos stay train-only
    min_train_photos: int = 2  # identities with fewer ok photos cannot teach a classifier: held out as strangers
    holdout_identities: int = 0  # whole identities kept out (split "holdout") for open-set evaluation
    # Faces with no names: every photo under RAW_DIR, in folders or not, gets no identity and split "unlabelled"
    # (what `train --teacher` learns from without labels).
    unlabelled: bool = False
    min_side: int = 32  # px; smaller photos are "too_small"
    max_pixels: int | None = None  # the largest photo decoded (width x height); None: images.MAX_PIXELS (40 MP)
    # Detection speed knobs (see FaceDetector); photos with no face found are retried without them.
    min_face_ratio: float = 0.25
    max_side: int = 640
    batch_size: int = 16
    jpeg_quality: int = 95

    def crop_key(self) -> dict:
        """What a crop's pixels depend on, given the face: change any and crops are re-cut."""
        return {"size": self.size, "margin": self.margin, "align": self.align}

    def content_key(self) -> dict:
        """What a row's status and kept face depend on: change any and every photo is re-done."""
        return {"select": self.select, "min_side": self.min_side, "max_pixels": self.max_pixels,
                "unlabelled": self.unlabelled}


@dataclass
class PrepareReport:
    """What a run did. ``rows`` is the whole manifest as written."""

    rows: list[ManifestRow]
    detected: int  # photos decoded and searched for faces in this run (including those that failed to decode)
    recropped: int  # crops re-cut from a stored face (crop settings changed)
    reused: int  # rows carried over from the previous run untouched
    train_only: list[str] = field(default_factory=list)  # identities with too few ok photos
    holdout: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)  # held out for having under min_train_photos ok photos
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.rows))

    @property
    def multi_face(self) -> int:
        return sum(r.multi_face for r in self.rows if r.status == "ok")

    @property
    def split_counts(self) -> dict[str, int]:
        return dict(Counter(r.split for r in self.rows if r.status == "ok"))


@dataclass(frozen=True)
class _Job:
    """One photo to decode, plus (when only re-cropping) the face found in an earlier run."""

    row: ManifestRow  # path/identity/sha256/size/mtime filled in; the rest is the outcome's
    source: str  # absolute path
    crop: str  # relative to OUT_DIR
    face: tuple | None = None  # (box, landmarks, prob, n_faces) to re-crop without detecting


def prepare(
    raw_dir: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: PrepareSettings = PrepareSettings(),
    device: str = "auto",
    workers: int = 2,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Clean, crop and split a folder of labelled photos; see the module docstring.

    Args:
        raw_dir: one sub-folder per identity (nested folders become "a/b" identities), or several such
            folders (distinct names) merged into one output by identity.
        out_dir: where crops, ``manifest.csv`` and ``dataset.json`` go; an earlier run's output is reused.
        settings: crop, split and detection settings.
        device: "auto" (CUDA if present), "cpu", "cuda", ...
        workers: CPU detection processes (each single-threaded); 1 runs in this process.
        progress: called with the number of photos finished, as they finish.
        on_total: called once with the number of photos that need decoding (before any work).

    Returns:
        A ``PrepareReport``; the manifest and settings are on disk.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    roots = raw_roots(raw_dir, out_dir)
    all_old_rows, old_rows, old_settings = _previous_run(out_dir, settings)
    files = []
    for label, root in roots.items():
        found = scan(root, exclude=out_dir, label=label)
        if settings.unlabelled:  # no names: folders are only where the photos happen to be
            found = [replace(f, identity="") for f in found]
        else:
            _require_people(root, found, out_dir)
        files += found
    people = {f.identity for f in files if f.identity}
    if settings.holdout_identities > len(people):
        raise BadInput(f"{settings.holdout_identities} is more than the {len(people)} people in "
                       f"{', '.join(str(r) for r in roots.values())}", param="holdout_identities")
    if settings.unlabelled and not files:
        raise BadInput(f"{', '.join(str(r) for r in roots.values())}: no files to look for faces in")
    rows, jobs, reused = _plan(files, out_dir, old_rows, old_settings, settings)
    if on_total:
        on_total(len(jobs))
    # Before any crop is written: the manifest holds only rows valid under the new settings.
    _checkpoint(out_dir, rows, settings)
    write_settings(out_dir, _settings_record(settings, roots))
    done = _run_jobs(jobs, out_dir, settings, device, workers, rows, progress)
    _remove_stale_crops(out_dir, all_old_rows, done)
    train_only, holdout, strangers = _checkpoint(out_dir, done, settings)
    if len(holdout) < settings.holdout_identities:
        logger.warning("only %d identities have %d+ ok photos to hold out", len(holdout), settings.min_photos)
    return PrepareReport(
        rows=sorted(done, key=lambda r: r.path),
        detected=sum(j.face is None for j in jobs),
        recropped=sum(j.face is not None for j in jobs),
        reused=reused,
        train_only=train_only,
        holdout=holdout,
        strangers=strangers,
        seconds=time.perf_counter() - start,
    )


def _previous_run(out_dir: Path, settings: PrepareSettings) -> tuple[list[ManifestRow], list[ManifestRow], dict]:
    """The earlier run's rows, those still reusable (none when its content settings differ: everything
    is redone), and its settings."""
    try:
        old_rows = read_manifest(out_dir)
    except FileNotFoundError:
        return [], [], {}
    old_settings = read_settings(out_dir)
    old_content = {k: old_settings.get(k) for k in settings.content_key()}
    if old_content != settings.content_key():
        logger.warning("%s: settings %s changed to %s; every photo is redone", out_dir, old_content, settings.content_key())
        return old_rows, [], old_settings
    return old_rows, old_rows, old_settings


def raw_roots(raw_dir, out_dir: Path) -> dict[str, Path]:
    """The raw folders by the label that prefixes their rows' paths: ``""`` for a single folder (paths
    relative to it, as always), else each folder's name, which must then differ between folders."""
    dirs = [raw_dir] if isinstance(raw_dir, (str, os.PathLike)) else list(raw_dir)
    if not dirs:
        raise BadInput("no raw photo folder given")
    roots = [Path(d).resolve() for d in dirs]
    for root in roots:
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a folder")
        if root == out_dir:
            raise BadInput(f"{out_dir}: the output folder must differ from the raw photo folders (crops would become "
                           "inputs)")
    if len(roots) == 1:
        return {"": roots[0]}
    labels = [r.name for r in roots]
    clash = sorted({n for n in labels if labels.count(n) > 1})
    if clash:
        raise BadInput(f"raw folders must have distinct names (their rows are told apart by it): {', '.join(clash)}")
    return dict(zip(labels, roots))


def _settings_record(settings: PrepareSettings, roots: dict[str, Path]) -> dict:
    record = {**asdict(settings), "raw_dirs": {label: str(root) for label, root in roots.items()}}
    if "" in roots:
        record["raw_dir"] = str(roots[""])
    return record


def raw_source(settings: dict, path: str, raw_dir: str | os.PathLike | None = None) -> Path | None:
    """The original photo of a manifest row's ``path``, from the folders ``dataset.json`` records
    (``raw_dir`` overrides a single folder's location); None when unknown."""
    roots = dict(settings.get("raw_dirs") or ({"": settings["raw_dir"]} if settings.get("raw_dir") else {}))
    if raw_dir is not None:
        roots[""] = raw_dir
    if "" in roots and len(roots) == 1:
        return Path(roots[""]) / path
    label, _, rel = path.partition("/")
    return Path(roots[label]) / rel if label in roots and label else None


# --- scan and hash -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    path: str  # relative to RAW_DIR, POSIX; prefixed with the folder's label when several are merged
    identity: str
    size: int
    mtime_ns: int
    source: str = ""  # absolute path
    refused: str = ""  # why it is not read (a link to a folder that is not followed)


def scan(raw_dir: Path, exclude: Path | None = None, label: str = "") -> list[_File]:
    """Every non-hidden file under ``raw_dir`` (sorted), skipping ``exclude`` (an OUT_DIR inside it); paths
    are prefixed with ``label/`` when it is given. A linked folder is followed when it leads to a folder inside
    ``raw_dir`` not scanned yet; any other (outside the input, or a loop) is listed as one refused entry."""
    files = []
    root = raw_dir.resolve()
    seen = {root}

    def entry(full: Path, refused: str = "") -> _File:
        try:
            stat = None if refused else full.stat()
        except OSError:
            stat = None
        rel = full.relative_to(raw_dir)
        return _File(
            path=f"{label}/{rel.as_posix()}" if label else rel.as_posix(),
            identity=rel.parent.as_posix() if rel.parent != Path(".") else "",
            size=stat.st_size if stat else -1,
            mtime_ns=stat.st_mtime_ns if stat else -1,
            source=str(full),
            refused=refused,
        )

    for folder, dirs, names in os.walk(raw_dir, followlinks=True):
        folder = Path(folder)
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".") and (exclude is None or folder / d != exclude)):
            real = (folder / d).resolve()
            if (folder / d).is_symlink():
                if not real.is_relative_to(root):
                    files.append(entry(folder / d, f"a link to {real}, outside the input folder: not followed"))
                    continue
                if real in seen or any(real == p for p in (folder.resolve(), *folder.resolve().parents)):
                    files.append(entry(folder / d, f"a link to {real}, a folder scanned already: not followed"))
                    continue
            seen.add(real)
            kept.append(d)
        dirs[:] = kept
        files += [entry(folder / name) for name in sorted(names) if not name.startswith(".")]
    return files


def _require_people(root: Path, files: list[_File], out_dir: Path) -> None:
    """Refuse a raw folder with no file inside a person folder: nothing in it could be labelled, and an earlier
    output's crops would all be dropped as stale."""
    if any(f.identity for f in files):
        return
    folders = sorted(d.name for d in root.iterdir()
                     if d.is_dir() and not d.name.startswith(".") and d.resolve() != out_dir)
    if folders:
        shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
        raise BadInput(f"{root}: its person folders ({shown}) hold no photos")
    loose = f"; its {len(files)} loose file(s) have no identity" if files else ""
    raise BadInput(f"{root}: holds no person folders (one sub-folder per person, with that person's photos)"
                   f"{loose}")


def _hash_files(files: list[_File], old_by_path: dict[str, ManifestRow]) -> list[ManifestRow]:
    """A row skeleton per file with its hash (reused while size and mtime are unchanged)."""
    rows = []
    for f in files:
        row = ManifestRow(f.path, f.identity, "", f.size, f.mtime_ns, status="", reason="")
        old = old_by_path.get(f.path)
        if f.refused:
            row.status, row.reason = "not_followed", f.refused
        elif old is not None and old.sha256 and (old.size, old.mtime_ns) == (f.size, f.mtime_ns):
            row.sha256 = old.sha256
        else:
            try:
                row.sha256 = file_sha256(Path(f.source))
            except OSError as e:
                row.status, row.reason = "unreadable", f"cannot read the file: {e.strerror or e}"
        rows.append(row)
    return rows


# --- plan: dedupe, reuse, jobs -------------------------------------------------------------------------


def _plan(files, out_dir, old_rows, old_settings, settings):
    """Rows settled without decoding (duplicates, conflicts, reused) and jobs for the rest."""
    rows = _hash_files(files, {r.path: r for r in old_rows})
    source = {f.path: f.source for f in files}
    _mark_duplicates(rows, settings.unlabelled)
    old_by_content = {(r.identity, r.sha256): r for r in old_rows if r.status in _PROCESSED and r.sha256}
    same_crops = {k: old_settings.get(k) for k in settings.crop_key()} == settings.crop_key()
    settled, jobs, reused = [], [], 0
    for row in rows:
        if row.status:  # unreadable, no_identity, duplicate or conflict
            settled.append(row)
            continue
        crop = crop_path(row.identity, row.sha256)
        old = old_by_content.get((row.identity, row.sha256))
        if old is not None and (old.status != "ok" or (same_crops and (out_dir / crop).is_file())):
            settled.append(_carry_over(old, row))
            reused += 1
        elif old is not None and old.box is not None and old.landmarks is not None:
            face = (old.box, old.landmarks, old.prob, old.n_faces)
            jobs.append(_Job(row, source[row.path], crop, face))
        else:
            jobs.append(_Job(row, source[row.path], crop))
    return settled, jobs, reused


def _mark_duplicates(rows: list[ManifestRow], unlabelled: bool = False) -> None:
    """Same bytes twice: ``duplicate`` within one identity (the first path is kept), ``conflict`` across
    identities (none of the copies is kept: we cannot tell whose photo it is). A file with no identity is
    ``no_identity``, unless the run is ``unlabelled``."""
    by_hash: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        if not row.status and not row.identity and not unlabelled:
            row.status, row.reason = "no_identity", "not inside an identity folder (RAW_DIR/<identity>/...)"
        elif not row.status:
            by_hash[row.sha256].append(row)
    for copies in by_hash.values():
        identities = sorted({r.identity for r in copies})
        if len(identities) > 1:
            for row in copies:
                others = [f"{r.identity!r} ({r.path})" for r in copies if r.identity != row.identity]
                row.status, row.reason = "conflict", "same content also under " + ", ".join(others)
            continue
        first = min(copies, key=lambda r: r.path)
        for row in copies:
            if row is not first:
                row.status, row.reason = "duplicate", f"same content as {first.path}"


def _carry_over(old: ManifestRow, row: ManifestRow) -> ManifestRow:
    """The earlier outcome for the same content, under this file's path, size and mtime."""
    return replace(old, path=row.path, identity=row.identity, size=row.size, mtime_ns=row.mtime_ns, split=None)


_UNSAFE = re.compile(r"[^\w\-. ]", re.UNICODE)


def safe_folder(identity: str) -> str:
    """An identity as a relative folder that cannot leave OUT_DIR: each part keeps letters, digits,
    ``-_. `` and spaces; ``..``, empty and hidden parts are defused."""
    parts = []
    for part in identity.split("/"):
        part = _UNSAFE.sub("_", part).strip()
        if not part or part.startswith("."):
            part = "_" + part.lstrip(".")
        parts.append(part)
    return "/".join(parts)


def crop_path(identity: str, sha256: str) -> str:
    return f"{safe_folder(identity)}/{sha256[:16]}.jpg"


# --- decode, detect, crop ------------------------------------------------------------------------------


def _run_jobs(jobs, out_dir, settings, device, workers, settled, progress) -> list[ManifestRow]:
    """Run every job (in worker processes on CPU), checkpointing the manifest as rows come back."""
    from facesearch.runtime import resolve_device  # torch loads once there are photos to detect, not on import

    device = str(resolve_device(device))
    done = list(settled)
    chunks = _chunks(jobs, 2 * settings.batch_size)
    last_write = time.monotonic()
    try:
        for rows in _map_chunks(chunks, out_dir, settings, device, workers):
            done.extend(rows)
            if progress:
                progress(len(rows))
            if time.monotonic() - last_write > _CHECKPOINT_SECONDS:
                _checkpoint(out_dir, done, settings)
                last_write = time.monotonic()
    finally:  # an interrupted run keeps what it finished
        _checkpoint(out_dir, done, settings)
    return done


def _checkpoint(out_dir: Path, rows: list[ManifestRow], settings: PrepareSettings) -> tuple[list[str], ...]:
    """Split and write the rows so far (atomically): a crash loses at most the photos since the last one."""
    split_info = assign_splits(rows, settings)
    write_manifest(out_dir, rows)
    return split_info


def _chunks(jobs: list[_Job], n: int) -> list[list[_Job]]:
    return [jobs[i : i + n] for i in range(0, len(jobs), n)]


def _map_chunks(chunks, out_dir, settings, device, workers) -> Iterable[list[ManifestRow]]:
    if not chunks:
        return
    if device != "cpu" or workers <= 1:
        _init_worker(str(out_dir), settings, device, threads=None)
        for chunk in chunks:
            yield _process_chunk(chunk)
        return
    init = (str(out_dir), settings, device, 1)
    with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker, initargs=init) as pool:
        futures = [pool.submit(_process_chunk, chunk) for chunk in chunks]
        for future in as_completed(futures):
            yield future.result()


def _mp_context():
    """fork where it is safe (Linux): the workers inherit this process's torch import instead of paying
    seconds of CPU each to import it again. The workers run torch single-threaded, so they never enter an
    OpenMP parallel region, the thing that can hang after a fork (torch's DataLoader workers rely on the
    same). macOS and Windows spawn."""
    if sys.platform.startswith("linux"):
        import torch  # noqa: F401 - imported once here (not on import: start-up), shared by every forked worker

        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_worker: dict = {}  # per process: out_dir, settings, detector


def _init_worker(out_dir: str, settings: PrepareSettings, device: str, threads: int | None) -> None:
    if threads is not None:
        from facesearch.runtime import set_threads  # torch: in the worker, not on import (start-up)

        set_threads(threads)
    detector = FaceDetector(
        device=device,
        batch_size=settings.batch_size if device == "cpu" else 4 * settings.batch_size,
        min_face_ratio=settings.min_face_ratio,
        max_side=settings.max_side,
    )
    _worker.update(out_dir=Path(out_dir), settings=settings, detector=detector)


def _process_chunk(jobs: list[_Job]) -> list[ManifestRow]:
    """Decode every photo of the chunk, detect faces in one batched call, crop and save."""
    settings: PrepareSettings = _worker["settings"]
    results: dict[int, ManifestRow] = {}
    images = {}
    for k, job in enumerate(jobs):
        try:
            images[k] = load_image(job.source, min_side=settings.min_side, max_pixels=settings.max_pixels)
        except ImageError as e:
            results[k] = replace(job.row, status=e.status, reason=e.reason)
        except Exception as e:  # noqa: BLE001 - one odd file must never stop the run
            results[k] = replace(job.row, status="unreadable", reason=f"cannot decode: {type(e).__name__}: {e}")
    to_detect = [k for k in images if jobs[k].face is None]
    found = _detect(_worker["detector"], [images[k] for k in to_detect])
    faces = dict(zip(to_detect, found))
    for k, image in images.items():
        results[k] = _crop_one(jobs[k], image, faces.get(k))
    return [results[k] for k in range(len(jobs))]


def _detect(detector, images) -> list:
    """Faces per photo; if the batched call fails, photo by photo (an error becomes that photo's row)."""
    if not images:
        return []
    try:
        return detector.detect(images)
    except Exception:  # noqa: BLE001
        logger.exception("batched detection failed; retrying photo by photo")
    found = []
    for image in images:
        try:
            found.extend(detector.detect([image]))
        except Exception as e:  # noqa: BLE001
            found.append(e)
    return found


def _crop_one(job: _Job, image, faces) -> ManifestRow:
    settings: PrepareSettings = _worker["settings"]
    if isinstance(faces, Exception):
        return replace(job.row, status="unreadable", reason=f"face detector failed: {faces}")
    if job.face is not None:
        box, landmarks, prob, n_faces = job.face
        face = DetectedFace(box=_f32(box), landmarks=_f32(landmarks), prob=float(prob or 0.0))
    else:
        n_faces = len(faces)
        face = select_face(faces, image.size, settings.select)
    if face is None:
        return replace(job.row, status="no_face", reason="MTCNN found no face")
    try:
        _save_crop(image, face, _worker["out_dir"] / job.crop, settings)
    except OSError as e:
        return replace(job.row, status="unreadable", reason=f"cannot write the crop: {e}")
    reason = f"{n_faces} faces found; kept the {settings.select} one" if n_faces > 1 else ""
    return replace(
        job.row, status="ok", reason=reason, prob=round(face.prob, 5), n_faces=n_faces, crop=job.crop,
        box=tuple(round(float(v), 2) for v in face.box),
        landmarks=tuple((round(float(x), 2), round(float(y), 2)) for x, y in face.landmarks),
    )


def _f32(values):
    return np.asarray(values, dtype=np.float32)


def _save_crop(image, face, target: Path, settings: PrepareSettings) -> None:
    """Write atomically, so a crash never leaves half a JPEG under a manifest's crop path."""
    crop = crop_face(image, face, size=settings.size, margin=settings.margin, align=settings.align)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    crop.save(tmp, format="JPEG", quality=settings.jpeg_quality)
    os.replace(tmp, target)


# --- split and tidy ------------------------------------------------------------------------------------


def _unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def assign_splits(rows: list[ManifestRow], settings: PrepareSettings) -> tuple[list[str], list[str], list[str]]:
    """Set ``split`` on every ok row, in place.

    A photo's split is a hash of (seed, content hash), so adding photos never moves the others. Identities
    with fewer than ``min_train_photos`` ok photos are strangers (split "holdout": one photo cannot teach a
    classifier, and open-set evaluation probes with them); those with fewer than ``min_photos`` are
    train-only; ``holdout_identities`` whole identities (chosen by a hash of seed and name among those with
    enough photos) get split "holdout". Copies of one photo in several raw folders (same identity and file
    name) always train.

    An ``unlabelled`` run puts every ok row in split "unlabelled".

    Returns:
        (train-only identities, holdout identities, stranger identities), each sorted.
    """
    by_identity: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        row.split = "unlabelled" if settings.unlabelled and row.status == "ok" else None
        if row.status == "ok" and not settings.unlabelled:
            by_identity[row.identity].append(row)
    strangers = sorted(i for i, rs in by_identity.items() if len(rs) < settings.min_train_photos)
    small = sorted(i for i, rs in by_identity.items() if len(rs) < settings.min_photos and i not in strangers)
    eligible = sorted((i for i in by_identity if len(by_identity[i]) >= settings.min_photos),
                      key=lambda i: _unit_hash(settings.seed, "holdout", i))
    holdout = sorted(eligible[: settings.holdout_identities])
    held = set(holdout) | set(strangers)
    for identity, members in by_identity.items():
        twins = Counter(_photo_name(r) for r in members)
        for row in members:
            train_only = identity in small or twins[_photo_name(row)] > 1
            row.split = "holdout" if identity in held else _split_of(row, train_only, settings)
    return small, holdout, strangers


def _photo_name(row: ManifestRow) -> str:
    """A photo's file name without its folder and extension: copies in two raw folders share it."""
    return Path(row.path).stem


def _split_of(row: ManifestRow, train_only: bool, settings: PrepareSettings) -> str:
    if train_only:
        return "train"
    u = _unit_hash(settings.seed, row.sha256)
    return "val" if u < settings.val else "test" if u < settings.val + settings.test else "train"


def _remove_stale_crops(out_dir: Path, old_rows: list[ManifestRow], rows: list[ManifestRow]) -> None:
    """Delete crops the previous manifest listed and this one does not (removed or now-conflicting files)."""
    keep = {r.crop for r in rows if r.status == "ok" and r.crop}
    for crop in {r.crop for r in old_rows if r.status == "ok" and r.crop} - keep:
        target = (out_dir / crop).resolve()
        if target.is_relative_to(out_dir) and target.is_file():
            target.unlink()
            logger.info("removed stale crop %s", crop)
