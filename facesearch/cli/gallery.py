"""``facesearch embed | enroll | who``, ``identities ...``, ``gallery ...`` and ``db ...`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import (
    DEFAULT_GALLERY, Checkpoint, CommandError, DbUrl, Device, GalleryDir, JsonFlag, Progress, RequiredCheckpoint, app,
    db_app, fail, gallery_app, identities_app, printable,
)

Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="Average each face with its mirror image.")]


def _open(gallery: Path, db: str | None, create: bool = False, reads_only: bool = False):
    """The gallery; a command that ``reads_only`` opens its database read-only, so it needs no write permission
    (a read-only mount, another user's gallery) and no free disk space."""
    from facesearch.gallery import Gallery

    return Gallery(gallery, db, create=create, read_only=reads_only)


def _embedder(checkpoint: Path | None, device: str, flip: bool = True, gallery=None):
    from facesearch.embed import Embedder, gallery_model

    return Embedder(gallery_model(checkpoint, gallery), device=device, flip=flip)


def _echo(data, as_json: bool, text: str) -> None:
    """``data`` as JSON, else ``text`` (whose names and paths the caller made ``printable``)."""
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


# -- embed, enroll, who -----------------------------------------------------------------------------


@app.command()
def embed(
    photos: Annotated[list[Path], typer.Argument(help="Photos, or folders of them (searched recursively).",
                                                 readable=False)],  # an unreadable photo is reported, not fatal
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings (n, d) float32 .npy; rows described in the .json beside it.")],
    select: Annotated[str, typer.Option(help='Faces per photo: "largest", "center" or "all".')] = "largest",
    flip: Flip = True,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
) -> None:
    """Embed the faces of photos (L2-normalised fc7), detected and cropped as `prepare` does.

    Exit status: 0 when every photo gave a face, 2 when some did not (each is listed with its reason), 1 when
    none did (nothing is written).
    """
    from facesearch.embed import embed_files, write_embeddings

    if out.is_dir():
        fail(f"--out {out}: a folder; give the .npy file to write")
    if out.suffix != ".npy":
        fail(f"--out {out}: not a .npy file name (numpy would write {out}.npy)")
    files = _photo_list(photos)
    embedder = _embedder(checkpoint, device, flip)
    with Progress("embedding", len(files)) as progress:
        result = embed_files(embedder, [str(p) for p in files], select=select, progress=progress.update)
    for path, reason in result.failures.items():
        typer.echo(f"{printable(path)}: {printable(reason)}", err=True)
    if not result.faces:
        fail(f"no face embedded from the {len(files)} photos (reasons above); nothing written to {out}")
    npy, meta = write_embeddings(result, out)
    typer.echo(f"{len(result.faces)} faces from {len(files) - len(result.failures)} photos → {printable(npy)} "
               f"(rows: {printable(meta)})")
    if result.failures:
        typer.echo(f"error: {len(result.failures)} of {len(files)} photos gave no face (reasons above)", err=True)
        raise typer.Exit(code=2)


@app.command()
def enroll(
    paths: Annotated[list[Path], typer.Argument(
        help="Photos of one identity (with --name), or folders with one sub-folder per identity.", readable=False)],
    gallery: GalleryDir = DEFAULT_GALLERY,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Who the photos show (stored trimmed, in Unicode NFC form; at most 200 characters).")] = None,
    largest: Annotated[bool, typer.Option("--largest", help="Enroll the largest face of group photos instead of refusing them.")] = False,
    db: DbUrl = None,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    store: Annotated[Optional[str], typer.Option(
        "--store", help='Where a new gallery keeps its vectors: "faiss" (an index file, the default) or "pgvector" '
                        "(in PostgreSQL: needs --db and the pgvector extension).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add faces to the gallery: one face per photo; photos already enrolled are skipped.

    Exit status: 0 when every photo is in the gallery under its name (enrolled now or before), 2 when some
    photos failed (each is listed with its reason), 1 when none could be enrolled.
    """
    from facesearch.data.images import is_photo
    from facesearch.gallery.enroll import enroll as run_enroll, folder_items
    from facesearch.gallery.identities import new_name

    items = []
    if name is not None:
        name = new_name(name)
    for path in paths:
        if name is not None and path.is_dir():
            folders = sorted(d.name for d in path.iterdir() if d.is_dir() and any(is_photo(p) for p in d.rglob("*")))
            if folders:
                fail(f"{path}: holds identity folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}); "
                     f"drop --name to enroll each sub-folder as its own identity")
            items += [(p, name) for p in sorted(path.iterdir()) if is_photo(p)]
        elif name is not None:
            items.append((path, name))
        elif path.is_dir():
            items += folder_items(path)
        elif path.exists():
            fail(f"{path}: not a folder; give --name NAME to enroll single photos")
        else:
            fail(f"{path}: no such file or folder")
    if not items:
        fail(f"no photos to enroll in {', '.join(map(str, paths))}")
    from facesearch.gallery.vectors import STORES

    if store is not None and store not in STORES:  # before a new gallery is created for nothing
        fail(f"--store {store!r}: one of {', '.join(STORES)}")
    with _open(gallery, db, create=True) as g:
        if store is not None:
            g.use_store(store, only_if_empty=True)
        embedder = _embedder(checkpoint, device, gallery=g)
        with Progress("enrolling", len(items), enabled=not as_json) as progress:
            outcomes = run_enroll(g, embedder, items, largest=largest, progress=progress.update)
    _print_outcomes(outcomes, as_json)


def _print_outcomes(outcomes, as_json: bool) -> None:
    """The outcome of each photo; exit status 2 when some failed, 1 when all did."""
    from collections import Counter
    from dataclasses import asdict, replace

    from facesearch.gallery.enroll import failed

    outcomes = [replace(o, reason=f"{o.reason} (--largest)") if o.status == "several_faces" else o
                for o in outcomes]  # the library says what is wrong, the command names its option
    counts = Counter(o.status for o in outcomes)
    n_failed = sum(failed(o) for o in outcomes)
    if as_json:
        typer.echo(json.dumps({"counts": dict(counts), "failed": n_failed, "photos": [asdict(o) for o in outcomes]},
                              indent=2))
    else:
        for o in outcomes:
            if o.status != "enrolled" or o.reason:
                typer.echo(printable(f"{o.path}: {o.status}{': ' + o.reason if o.reason else ''}"))
        typer.echo(", ".join(f"{n} {status}" for status, n in counts.most_common()))
    if n_failed:
        if not as_json:
            typer.echo(f"error: {n_failed} of {len(outcomes)} photos not enrolled (reasons above)", err=True)
        raise typer.Exit(code=1 if n_failed == len(outcomes) else 2)


@app.command()
def who(
    photos: Annotated[list[Path], typer.Argument(
        help="The photo to identify (every face in it); several photos or folders are answered in one run.",
        readable=False)],  # an unreadable photo is reported and the others answered
    gallery: GalleryDir = DEFAULT_GALLERY,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Identities listed per face.")] = 5,
    threshold: Annotated[Optional[float], typer.Option(help="Cosine similarity (-1 to 1) needed to name a face (default: the gallery's calibrated one).")] = None,
    annotate: Annotated[Optional[Path], typer.Option("--annotate", help="Save the photo with boxes and names here (several photos: into this folder). Never inside the gallery folder, never over a photo answered.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files --annotate finds already there.")] = False,
    min_face: Annotated[Optional[int], typer.Option(min=12, help="Smallest face looked for, in pixels (default: the model's, 40; 20 finds tiny faces, slower).")] = None,
    db: DbUrl = None,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Who is this? The top-k enrolled identities of every face in a photo, or "unknown".

    Several photos (or folders of them) are answered in one run, one result per photo as it is done (JSON
    lines with --json); a photo that cannot be read is reported and the run goes on. Exit status: 0 when every
    photo was answered, 2 when some could not be read, 1 when none could.
    """
    from facesearch.embed import Embedder, gallery_model
    from facesearch.search import who as run_who

    if threshold is not None and not -1.0 <= threshold <= 1.0:  # also refuses nan
        fail(f"--threshold {threshold}: a cosine similarity lies between -1 and 1")
    if len(photos) == 1 and not photos[0].is_dir():
        photo = photos[0]
        if not photo.exists():
            fail(f"{printable(photo)}: no such file")  # anything else there but a photo file: load_image says what
        if annotate is not None:
            _check_annotate([annotate], [photo], gallery, db, overwrite)
        with _open(gallery, db, reads_only=True) as g:
            result = run_who(g, Embedder.for_queries(gallery_model(checkpoint, g), device, min_face), str(photo),
                             top_k=top_k, threshold=threshold, annotate_into=annotate, overwrite=overwrite)
        _echo(result.to_dict(), as_json, _who_text(result))
        return
    listed = _photo_list(photos)
    drawn = None
    if annotate is not None:
        if annotate.exists() and not annotate.is_dir():
            fail(f"--annotate {annotate}: not a folder (several photos are drawn into a folder)", code=2)
        drawn = [annotate / f"{n:05d}-{p.stem}.jpg" for n, p in enumerate(listed)]
        _check_annotate(drawn, listed, gallery, db, overwrite)
    _who_many(listed, gallery, db, checkpoint, device, min_face, top_k, threshold, drawn, overwrite, as_json)


def _check_annotate(outs: list[Path], photos: list[Path], gallery: Path, db: str | None, overwrite: bool) -> None:
    """Refuse (exit 2), before any work, --annotate files that would overwrite a photo answered, anything in the
    gallery folder (or its database file), or, without --overwrite, any existing file."""
    from facesearch.gallery import db as gdb
    from facesearch.search import annotation_problem

    database = gdb.sqlite_path(gdb.resolve_url(gallery, db))
    problem = annotation_problem(outs, photos, [gallery] + ([database] if database is not None else []), overwrite)
    if problem:
        raise CommandError(problem.text(), code=2, param="annotate", remedy=problem.remedies)


def _photo_list(paths: list[Path]) -> list[Path]:
    """``data.images.list_photos``, refusing an empty result."""
    from facesearch.data.images import list_photos

    photos = list_photos(paths)
    if not photos:
        fail(f"no photos in {', '.join(map(str, paths))}")
    return photos


def _who_many(photos, gallery, db, checkpoint, device, min_face, top_k, threshold, drawn, overwrite, as_json) -> None:
    """``who`` for many photos; ``drawn``: the file each photo's answers are drawn into (None: not drawn)."""
    from facesearch.embed import Embedder, gallery_model
    from facesearch.search import WhoFailure, who_many

    failed = 0
    with _open(gallery, db, reads_only=True) as g:
        embedder = Embedder.for_queries(gallery_model(checkpoint, g), device, min_face)
        with Progress("answering", len(photos)) as bar:
            for n, result in enumerate(who_many(g, embedder, photos, top_k=top_k, threshold=threshold,
                                                progress=bar.update, annotate_into=drawn, overwrite=overwrite)):
                if isinstance(result, WhoFailure):
                    failed += 1
                    typer.echo(json.dumps(result.to_dict()) if as_json else
                               printable(f"{result.photo}: {result.status}: {result.reason}"))
                    continue
                if not as_json and n - failed == 0:
                    typer.echo(f"# threshold {result.threshold:.3f} ({result.threshold_source}); photo, faces, "
                               "each face's answer and similarity")
                typer.echo(json.dumps(result.to_dict(), default=str) if as_json else _who_line(result))
    if failed:
        typer.echo(f"error: {failed} of {len(photos)} photos could not be read (listed above)", err=True)
        raise typer.Exit(code=1 if failed == len(photos) else 2)


def _who_line(result) -> str:
    """One photo's answers on one line: each face's identity and similarity."""
    faces = "; ".join(printable(f.identity) + ("" if f.similarity is None else f" {f.similarity:.3f}")
                      for f in result.faces)
    return f"{printable(result.photo)}\t{len(result.faces)} face{'' if len(result.faces) == 1 else 's'}\t{faces or '-'}"


def _who_text(result) -> str:
    n = len(result.faces)
    lines = [f"{printable(result.photo)}: {n} face{'' if n == 1 else 's'} (threshold {result.threshold:.3f}, "
             f"{result.threshold_source})"]
    for i, face in enumerate(result.faces, 1):
        box = ",".join(f"{v:.0f}" for v in face.box)
        lines.append(f"face {i} [{box}]: {printable(face.identity)}")
        for m in face.matches:
            lines.append(f"    {m.similarity:6.3f}  {printable(m.name)}  (face {m.face_id})")
    return "\n".join(lines)


# -- identities -------------------------------------------------------------------------------------


@identities_app.command("list")
def identities_list(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None, as_json: JsonFlag = False) -> None:
    """Every identity and its number of faces."""
    with _open(gallery, db, reads_only=True) as g:
        infos = g.identities()
    rows = [{"name": i.name, "faces": i.n_faces, "updated": i.updated_at} for i in infos]
    _echo(rows, as_json, "\n".join(f"{i.n_faces:6d}  {printable(i.name)}" for i in infos) or "(no identities)")


@identities_app.command("show")
def identities_show(name: str, gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None, as_json: JsonFlag = False) -> None:
    """One identity's faces: id, source photo, crop, box."""
    from dataclasses import asdict

    with _open(gallery, db, reads_only=True) as g:
        info = g.identity(name)
    lines = [f"{printable(info.name)}: {info.n_faces} faces"]
    lines += [printable(f"  face {f.id}: {f.source_path}  crop {f.crop_path}  box {f.box}") for f in info.faces]
    _echo(asdict(info), as_json, "\n".join(lines))


@identities_app.command("rename")
def identities_rename(old: str, new: str, gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None) -> None:
    """Rename an identity (fails if NEW exists: merge instead)."""
    with _open(gallery, db) as g:
        g.rename(old, new)
    typer.echo(f"renamed {old!r} → {new!r}")


@identities_app.command("merge")
def identities_merge(
    source: str,
    target: str,
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    create: Annotated[bool, typer.Option("--create", help="Create TARGET when no identity has that name.")] = False,
) -> None:
    """Move every face of SOURCE to TARGET and delete SOURCE (TARGET must exist unless --create)."""
    from facesearch.gallery import IdentityNotFound  # the gallery package loads on use: `--help` stays fast

    with _open(gallery, db) as g:
        try:
            moved = g.merge(source, target, create=create)
        except IdentityNotFound as e:
            if create or any(i.name == target for i in g.identities()):
                raise
            fail(f"{e} (--create)")
    typer.echo(f"merged {source!r} into {target!r}: {moved} faces moved")


@identities_app.command("remove")
def identities_remove(
    name: str,
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an identity, its faces, their vectors and their stored crops."""
    with _open(gallery, db) as g:
        faces = g.identity(name).n_faces  # an unknown name is refused before anything is asked
        if not yes:
            typer.confirm(f"remove {name!r} and its {faces} faces?", abort=True)
        removed = g.remove(name)
    typer.echo(f"removed {name!r}: {removed} faces")


# -- gallery maintenance ----------------------------------------------------------------------------


@gallery_app.command("stats")
def gallery_stats(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None, as_json: JsonFlag = False) -> None:
    """Counts, model, threshold and index of the gallery. The threshold is the one `who` names faces at: the
    gallery's calibrated one, else the one its model records, else the default (`threshold_source`)."""
    from facesearch.checkpoint import CheckpointError, load_checkpoint
    from facesearch.embed import gallery_model
    from facesearch.search import answer_threshold

    with _open(gallery, db, reads_only=True) as g:
        stats = g.stats()
        loaded = None
        if g.stored_threshold() is None:  # none of the gallery's own (calibrated or set): the model's applies
            try:
                loaded = load_checkpoint(gallery_model(None, g), "cpu", kind="faces")
            except (CheckpointError, OSError) as e:  # the counts are still worth showing
                stats["model_problem"] = str(e)
        stats["threshold"], stats["threshold_source"] = answer_threshold(g, loaded)
    _echo(stats, as_json, "\n".join(f"{k}: {printable(v)}" for k, v in stats.items()))


@gallery_app.command("check")
def gallery_check(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None, as_json: JsonFlag = False) -> None:
    """Compare the index, the vectors, the crops and the uploaded photos with the database; exit code 1 when they
    disagree (each problem says what fixes it)."""
    with _open(gallery, db, reads_only=True) as g:
        report = g.check()
    text = "consistent" if report.ok else "\n".join(["problems:"] + [f"  {printable(p)}" for p in report.problems])
    _echo({"ok": report.ok, "problems": report.problems, **report.details}, as_json, text)
    if not report.ok:
        raise typer.Exit(code=1)


@gallery_app.command("rebuild")
def gallery_rebuild(
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    index: Annotated[Optional[str], typer.Option("--index", help='Index kind: "flat" (exact), "hnsw" or "ivf".')] = None,
    pca: Annotated[Optional[int], typer.Option("--pca", help="Reduce embeddings to this many dimensions (0: no PCA).")] = None,
    ivf_codec: Annotated[Optional[str], typer.Option(help='IVF codes: "flat", "sq8" or "pq".')] = None,
    ef_search: Annotated[Optional[int], typer.Option(
        help="HNSW search breadth (recall vs speed) of the store in use; a pgvector gallery takes it at once, "
             "without rebuilding its index.", min=1)] = None,
    nprobe: Annotated[Optional[int], typer.Option(help="IVF lists visited per query (recall vs speed).", min=1)] = None,
) -> None:
    """Rebuild the index from the database (optionally with new index settings); delete crops and uploaded photos
    no face refers to. An interrupted rebuild changes nothing."""
    from dataclasses import replace

    with _open(gallery, db) as g:
        current = g.vector_settings  # a pgvector gallery keeps the FAISS settings for a move back to the file
        changes = {k: v for k, v in {"kind": index, "ivf_codec": ivf_codec, "ivf_nprobe": nprobe}.items()
                   if v is not None}
        if pca is not None:
            dim = g.stats()["embedding_dim"]
            if pca < 0 or (dim is not None and pca >= dim):
                fail(f"--pca {pca}: the gallery's embeddings have {dim} dimensions; give fewer (0: no PCA)")
            changes["pca_dim"] = pca or None
        settings = replace(current, faiss=replace(current.faiss, **changes))
        if ef_search is not None:
            settings = settings.with_search_breadth(ef_search)
        result = g.rebuild(settings if changes or ef_search is not None else None)
        faiss = g.vector_settings.faiss
    if result["rebuilt"]:
        waits = result["trains_at"] is not None
        typer.echo(f"index rebuilt: {result['layout']}, {result['faces']} faces"
                   + (f" (exact until the gallery holds {result['trains_at']} faces: then the {faiss.kind}"
                      f"{' + PCA' if faiss.pca_dim else ''} index is trained)" if waits else ""))
    else:
        typer.echo(f"{result['layout']}: ef_search {ef_search} from the next search on, {result['faces']} faces, "
                   "nothing rebuilt")
    if result["orphan_crops"] or result["orphan_uploads"]:
        typer.echo(f"deleted {result['orphan_crops']} crop files and {result['orphan_uploads']} uploaded photos that "
                   "belonged to no face")


@gallery_app.command("store")
def gallery_store(
    store: Annotated[str, typer.Argument(help='"faiss" (an index file in the gallery folder) or "pgvector" '
                                              "(the vectors and an HNSW index in PostgreSQL).")],
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Move the gallery's vectors between the FAISS file and PostgreSQL's pgvector, in one transaction.

    With pgvector every process that opens the gallery sees every committed enrollment at once (several
    `facesearch serve` behind a load balancer); the faces, names and stored embeddings do not change.
    """
    with _open(gallery, db) as g:
        result = g.use_store(store)  # an unknown store is refused there (VectorSettings)
    _echo(result, as_json, f"{printable(gallery)}: vectors in the {printable(store)} store ({result['faces']} faces)"
                           + ("" if result["moved"] else ", as they were"))


@gallery_app.command("reembed")
def gallery_reembed(
    checkpoint: RequiredCheckpoint,
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    device: Device = "auto",
) -> None:
    """Move the gallery to a new model: recompute every face from its stored photo and box."""
    from facesearch.gallery.enroll import reembed

    with _open(gallery, db) as g:
        embedder = _embedder(checkpoint, device)
        with Progress("re-embedding", g.stats()["faces"]) as progress:
            report = reembed(g, embedder, progress=progress.update)
    typer.echo(f"{report.faces} faces re-embedded with model {embedder.fingerprint} "
               f"({report.from_photo} from their photo, {report.from_crop} from the stored crop)")


# -- database schema --------------------------------------------------------------------------------


def _engine(gallery: Path, db: str | None, read_only: bool = False):
    from facesearch.gallery import db as gdb

    url = gdb.resolve_url(gallery, db)
    sqlite_file = gdb.sqlite_path(url)
    if read_only and sqlite_file is not None and not sqlite_file.exists():
        fail(f"{sqlite_file}: no gallery database")
    if not read_only:
        gallery.mkdir(parents=True, exist_ok=True, mode=0o700)
    return gdb.create_engine(url, read_only=read_only)


@db_app.command("upgrade")
def db_upgrade(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None,
               revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the schema migrations (needed once for a PostgreSQL gallery; SQLite upgrades itself)."""
    from facesearch.gallery import db as gdb

    engine = _engine(gallery, db)
    gdb.checked_revision(engine)  # a newer facesearch's database, or a damaged one, is refused untouched
    gdb.upgrade(engine, revision)
    typer.echo(f"{printable(gdb.masked(engine))}: at revision {gdb.current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help='Target revision ("base": drop every gallery table).')],
                 gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None,
                 yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Revert schema migrations down to REVISION (asks first: a downgrade can drop tables and what they hold)."""
    from alembic.util import CommandError

    from facesearch.gallery import db as gdb

    engine = _engine(gallery, db)
    gdb.checked_revision(engine)
    if not yes:
        what = "drop every gallery table and all it holds (identities, faces, keys)" if revision == "base" else \
            "undo the schema changes after it; columns they added are dropped with their data"
        typer.confirm(f"downgrade {printable(gdb.masked(engine))} to {revision!r}: {what}?", abort=True)
    try:
        gdb.downgrade(engine, revision)
    except CommandError as e:
        fail(f"revision {revision!r}: {e} (`facesearch db current` shows the known ones)")
    typer.echo(f"{printable(gdb.masked(engine))}: at revision {gdb.current_revision(engine)}")


@db_app.command("stamp")
def db_stamp(revision: Annotated[str, typer.Argument(help="The revision the database's tables are at.")],
             gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None,
             yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Record the schema revision of a database that lost it (its tables are not changed): only when you know
    which revision they are at, e.g. from the facesearch version that made them."""
    from alembic.util import CommandError

    from facesearch.gallery import db as gdb

    engine = _engine(gallery, db)
    if not yes:
        typer.confirm(f"record that {gdb.masked(engine)} is at schema revision {revision!r} (its tables unchanged)?",
                      abort=True)
    try:
        gdb.stamp(engine, revision)
    except CommandError as e:
        fail(f"revision {revision!r}: {e} (this facesearch knows revisions up to {gdb.head_revision()})")
    typer.echo(f"{printable(gdb.masked(engine))}: at revision {gdb.current_revision(engine)}")


@db_app.command("current")
def db_current(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None) -> None:
    """The database's schema revision and the latest one this version knows."""
    from facesearch.gallery import db as gdb

    engine = _engine(gallery, db, read_only=True)
    try:
        current = gdb.checked_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"{printable(gdb.masked(engine))}: at revision {current} (latest {gdb.head_revision()})")
