"""The gallery core on synthetic embeddings, against SQLite and PostgreSQL: SQL and index stay one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from builders import STORES, database_url

DIM = 32
FP = "model-a"


@pytest.fixture(params=STORES)
def backend(request) -> str:
    return request.param


@pytest.fixture
def url(backend, tmp_path):
    yield from database_url(backend, tmp_path)


@pytest.fixture
def faiss_only(backend):
    """For tests of the FAISS index file itself: the pgvector store has none."""
    if backend == "pgvector":
        pytest.skip("tests the FAISS index file, which a pgvector gallery does not have")


@pytest.fixture
def open_gallery(tmp_path, url, backend):
    """Open (or reopen) the test gallery (with the pgvector store on that backend); every opened one is
    closed at the end."""
    from facesearch.gallery import Gallery

    opened = []

    def _open(**kwargs):
        g = Gallery(tmp_path / "g", url, migrate=True, **kwargs)
        if backend == "pgvector" and not opened:
            g.use_store("pgvector")
        opened.append(g)
        return g

    yield _open
    for g in opened:
        g.close()


def unit(rng, n, d=DIM):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_faces(names, x, tag="p", crops=False):
    from facesearch.gallery import NewFace

    crop = Image.new("RGB", (8, 8), (200, 100, 50)) if crops else None
    return [
        NewFace(name=n, embedding=v, source_path=f"/photos/{tag}{i}.jpg", source_sha256=f"{tag}-{i}", crop=crop)
        for i, (n, v) in enumerate(zip(names, x))
    ]


def assert_consistent(g):
    """Every face in SQL is its own top-1 (searching brings a stale index up to date first), and then
    check() finds nothing: no face missing from the index, no orphan vector."""
    import sqlalchemy as sa
    from facesearch.gallery.models import Face

    with g.engine.connect() as conn:
        rows = conn.execute(sa.select(Face.id, Face.embedding).order_by(Face.id)).all()
    if rows:
        from facesearch.gallery.embeddings import decode_embeddings

        xq = decode_embeddings([r[1] for r in rows], g.stats()["embedding_dim"])
        top1 = [hits[0].face_id for hits in g.search(xq, k=1)]
        assert top1 == [r[0] for r in rows]
    report = g.check()
    assert report.ok, report.problems


def test_enrolled_face_is_its_own_top1_and_duplicates_are_skipped(open_gallery):
    g = open_gallery()
    x = unit(np.random.default_rng(0), 12)
    result = g.add_faces(new_faces([f"person {i % 4}" for i in range(12)], x), FP)
    assert len(result.ids) == 12 and result.duplicates == []
    hits = g.search(x[5], k=3)[0]
    assert hits[0].face_id == result.ids[5] and hits[0].identity == "person 1"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    again = g.add_faces(new_faces(["someone else"], x[:1]), FP)  # same content hash as photo 0
    assert again.ids == [] and again.duplicates == [(0, "person 0")]
    assert g.enrolled_as("p-0") == "person 0"
    assert_consistent(g)


def test_rename_merge_remove_keep_sql_and_index_consistent(open_gallery, tmp_path):
    from facesearch.gallery import GalleryError, IdentityNotFound

    g = open_gallery()
    x = unit(np.random.default_rng(1), 9)
    ids = g.add_faces(new_faces(["ann"] * 3 + ["bob"] * 3 + ["cy"] * 3, x, crops=True), FP).ids
    g.rename("ann", "anne")
    with pytest.raises(GalleryError):
        g.rename("anne", "bob")
    assert g.merge("cy", "bob") == 3
    assert {i.name: i.n_faces for i in g.identities()} == {"anne": 3, "bob": 6}
    crops = [f.crop_path for f in g.identity("bob").faces]
    assert all(p.is_file() and p.is_relative_to(tmp_path / "g" / "crops") for p in crops)
    assert g.remove("bob") == 6
    assert not any(p.exists() for p in crops)
    with pytest.raises(IdentityNotFound):
        g.identity("bob")
    assert {h.face_id for h in g.search(x, k=9)[0]} == set(ids[:3])
    assert_consistent(g)


def test_face_ids_are_never_reused(open_gallery):
    g = open_gallery()
    rng = np.random.default_rng(2)
    first = g.add_faces(new_faces(["a", "a", "b"], unit(rng, 3), tag="x"), FP).ids
    g.remove("b")
    later = g.add_faces(new_faces(["c"], unit(rng, 1), tag="y"), FP).ids
    assert later[0] > max(first)


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip", "stale", "foreign"])
def test_damaged_or_stale_index_is_rebuilt(faiss_only, open_gallery, tmp_path, damage):
    g = open_gallery()
    rng = np.random.default_rng(3)
    g.add_faces(new_faces(["a"] * 5, unit(rng, 5), tag="old"), FP)
    path = g.index_path
    old = path.read_bytes()
    g.add_faces(new_faces(["b"] * 5, unit(rng, 5), tag="new"), FP)
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:])
    elif damage == "stale":
        path.write_bytes(old)  # an older, intact index: epoch behind the database
    else:
        from facesearch.gallery import Gallery

        with Gallery(tmp_path / "other") as other:  # a different database's index, same face ids
            other.add_faces(new_faces(["z"] * 10, unit(rng, 10), tag="o"), FP)
            path.write_bytes(other.index_path.read_bytes())
    fresh = open_gallery()
    assert not fresh.check().ok
    assert len(fresh.search(unit(rng, 1), k=20)[0]) == 10  # searching synchronises the index
    assert_consistent(fresh)


def test_crash_between_commit_and_index_write_leaves_no_orphans(faiss_only, open_gallery, monkeypatch):
    from facesearch.gallery.vectors.freshness import IndexKeeper

    g = open_gallery()
    rng = np.random.default_rng(4)
    g.add_faces(new_faces(["a"] * 4, unit(rng, 4), tag="a"), FP)
    monkeypatch.setattr(IndexKeeper, "sync", lambda self, rebuild=False: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        g.add_faces(new_faces(["b"] * 4, unit(rng, 4), tag="b"), FP)  # committed, index not written
    with pytest.raises(KeyboardInterrupt):
        g.remove("a")
    monkeypatch.undo()
    fresh = open_gallery()
    assert [i.name for i in fresh.identities()] == ["b"]
    assert not fresh.check().ok  # the file on disk is stale until the next search or rebuild
    assert_consistent(fresh)


ENROLL_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from facesearch.gallery import Gallery, NewFace
    folder, url, tag, batches = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4])
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    g = Gallery(folder, url, migrate=True)
    for b in range(batches if batches > 0 else 10**9):
        x = rng.standard_normal((5, 256)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        g.add_faces([NewFace(name=f"{tag} {b}", embedding=v, source_sha256=f"{tag}-{b}-{i}") for i, v in enumerate(x)], "fp")
        print(b, flush=True)
    """
)


def _enroller(tmp_path, url, tag, batches):
    return subprocess.Popen(
        [sys.executable, "-c", ENROLL_LOOP, str(tmp_path / "g"), url or "", tag, str(batches)],
        stdout=subprocess.PIPE, text=True,
    )


def test_killed_enrollment_leaves_a_consistent_gallery(open_gallery, tmp_path, url):
    open_gallery()  # the schema (and the store) first, as the killed process will find them
    proc = _enroller(tmp_path, url, "kill", 0)
    for _ in range(6):  # let a few batches commit, then kill without warning
        assert proc.stdout.readline(), "enrolling process died"
    time.sleep(np.random.default_rng().uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    g = open_gallery()
    assert len(g.face_sources()) >= 30
    assert_consistent(g)


def test_two_concurrent_enrollments_lose_nothing(open_gallery, tmp_path, url):
    open_gallery()  # create the schema first, so both writers find it
    procs = [_enroller(tmp_path, url, tag, 6) for tag in ("left", "right")]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    g = open_gallery()
    assert len(g.face_sources()) == 60
    assert len(g.identities()) == 12
    assert_consistent(g)


def test_hostile_names_are_stored_as_given_and_never_become_paths(open_gallery, tmp_path):
    names = ["../../escape", "a/b", "..", "O'Brien \"Bob\"", "x'); DROP TABLE faces; --", "/etc/passwd", "ünï ✓"]
    outside = set(tmp_path.parent.iterdir())
    g = open_gallery()
    g.add_faces(new_faces(names, unit(np.random.default_rng(5), len(names)), crops=True), FP)
    assert sorted(i.name for i in g.identities()) == sorted(names)
    for name in names:
        (face,) = g.identity(name).faces
        assert face.crop_path.resolve().is_relative_to((tmp_path / "g" / "crops").resolve())
    files = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith("g/") for p in files), files
    assert set(tmp_path.parent.iterdir()) == outside
    g.rename(names[0], names[1] + "/..")
    assert g.remove(names[1] + "/..") == 1
    assert_consistent(g)


def test_a_tampered_crop_path_never_leaves_the_gallery_folder(tmp_path):
    """Search hits check crop paths lexically (no file-system calls); both checks refuse the same escapes."""
    from facesearch.gallery.files import inside, inside_lexically

    folder = (tmp_path / "g").resolve()
    for rel in ["../escape.jpg", "crops/../../escape.jpg", "/etc/passwd", "", None]:
        assert inside_lexically(folder, rel) is None and inside(folder, rel) is None
    for rel in ["crops/7.jpg", "crops/./7.jpg", "crops/x/../7.jpg"]:
        assert inside_lexically(folder, rel) == inside(folder, rel) == folder / "crops" / "7.jpg"


def test_a_gallery_never_mixes_models(open_gallery):
    from facesearch.gallery import ModelMismatchError

    g = open_gallery()
    rng = np.random.default_rng(6)
    g.add_faces(new_faces(["a", "b"], unit(rng, 2)), FP)
    with pytest.raises(ModelMismatchError, match="reembed"):
        g.add_faces(new_faces(["c"], unit(rng, 1), tag="c"), "model-b")
    with pytest.raises(ModelMismatchError):
        g.check_model("model-b")
    ids = [f.id for f in g.face_sources()]
    g.replace_embeddings(ids, unit(rng, len(ids), d=16), "model-b")  # what `gallery reembed` does
    assert g.model_fingerprint == "model-b"
    g.add_faces(new_faces(["c"], unit(rng, 1, d=16), tag="c"), "model-b")
    assert_consistent(g)


def test_hnsw_tombstones_are_filtered_then_rebuilt(faiss_only, open_gallery):
    from facesearch.gallery import IndexSettings

    g = open_gallery()
    g.rebuild(IndexSettings(kind="hnsw", max_tombstone_ratio=0.3))
    x = unit(np.random.default_rng(7), 40)
    ids = g.add_faces(new_faces([f"p{i}" for i in range(40)], x), FP).ids
    g.remove("p0")
    assert ids[0] not in {h.face_id for h in g.search(x[0], k=5)[0]}
    assert g.stats()["index_tombstones"] == 1
    for i in range(1, 13):  # 13 / 40 deleted > 0.3: the next sync rebuilds
        g.remove(f"p{i}")
    assert g.stats()["index_tombstones"] == 0
    assert_consistent(g)


def test_an_identity_is_scored_exactly_against_each_of_its_faces_whatever_the_index(open_gallery, backend):
    """score_identity reads the identity's own stored embeddings: every face of it, with its exact cosine, where a
    search of an approximate index (IVF visiting one list of 16) for as many faces as the gallery holds leaves some
    of that identity's faces out."""
    from facesearch.gallery import GalleryError, IdentityNotFound, IndexSettings

    g = open_gallery()
    if backend != "pgvector":
        g.rebuild(IndexSettings(kind="ivf", min_train=100, ivf_nlist=16, ivf_nprobe=1))
    rng = np.random.default_rng(29)
    others, mine = unit(rng, 200), unit(rng, 40)
    g.add_faces(new_faces(["other"] * 200, others, tag="o"), FP)
    ids = g.add_faces(new_faces(["me"] * 40, mine, tag="m"), FP).ids
    query = unit(rng, 1)[0]
    if backend != "pgvector":
        assert g.stats()["index_layout"] == "ivf"
        searched = {h.face_id for h in g.search(query, k=240)[0] if h.identity == "me"}
        assert searched < set(ids)  # the index's top k misses some of them: why verify no longer uses it
    hits = g.score_identity("me", query)
    assert {h.face_id for h in hits} == set(ids) and {h.identity for h in hits} == {"me"}
    exact = dict(zip(ids, (mine @ query).tolist()))
    assert [h.similarity for h in hits] == pytest.approx([exact[h.face_id] for h in hits], abs=1e-6)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    g.create_identity("nobody")
    assert g.score_identity("nobody", query) == []
    with pytest.raises(IdentityNotFound, match="'ghost'"):
        g.score_identity("ghost", query)
    with pytest.raises(GalleryError, match="dimensions"):
        g.score_identity("me", query[:8])


def test_ivf_with_pca_is_trained_once_the_gallery_is_large_enough(faiss_only, open_gallery):
    from facesearch.gallery import IndexSettings

    g = open_gallery()
    g.rebuild(IndexSettings(kind="ivf", pca_dim=8, min_train=150, ivf_nlist=4, ivf_nprobe=4))
    rng = np.random.default_rng(8)
    g.add_faces(new_faces(["a"] * 100, unit(rng, 100), tag="a"), FP)
    assert g.stats()["index_layout"] == "flat"
    x = unit(rng, 100)
    g.add_faces(new_faces(["b"] * 100, x, tag="b"), FP)
    assert g.stats()["index_layout"] == "ivf+pca"
    hits = g.search(x[3], k=5)[0]  # re-scored exactly from SQL even though the index is approximate
    assert hits[0].identity == "b" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_threshold_defaults_then_stores_calibration(open_gallery):
    from facesearch.gallery import DEFAULT_THRESHOLD

    g = open_gallery()
    assert g.threshold() == (DEFAULT_THRESHOLD, None)
    g.set_threshold(0.42, {"far": 0.001, "source": "lfw"})
    assert open_gallery().threshold() == (0.42, {"far": 0.001, "source": "lfw"})


def test_pgvector_galleries_on_two_machines_see_each_commit_at_once(open_gallery, backend, url, tmp_path):
    """Two gallery folders (two servers) on one pgvector database: a face one enrolls is found by the other
    in its next search, with no index file anywhere; a removal is gone for both."""
    if backend != "pgvector":
        pytest.skip("the pgvector store's sharing")
    from facesearch.gallery import Gallery

    here = open_gallery()
    there = Gallery(tmp_path / "elsewhere", url, migrate=True)
    try:
        rng = np.random.default_rng(11)
        x = unit(rng, 3)
        here.add_faces(new_faces(["ann", "bob", "cy"], x), FP)
        assert [h[0].identity for h in there.search(x, k=1)] == ["ann", "bob", "cy"]
        more = unit(rng, 1)
        there.add_faces(new_faces(["dee"], more, tag="q"), FP)
        assert here.search(more, k=1)[0][0].identity == "dee"
        here.remove("bob")
        assert "bob" not in {h.identity for h in there.search(x[1:2], k=5)[0]}
        assert not (tmp_path / "g" / "index.faiss").exists() and not (tmp_path / "elsewhere" / "index.faiss").exists()
        assert there.check().ok and here.stats()["vector_rows"] == 3
    finally:
        there.close()


def test_search_breadth_of_the_store_in_use_is_set_by_rebuild(open_gallery, backend, url, tmp_path, monkeypatch):
    """`gallery rebuild --ef-search N` sets the breadth of the store the vectors are in: FAISS's HNSW, or
    pgvector's, which takes it without rewriting a vector row or rebuilding its index."""
    import json

    from builders import NO_ENV, run_cli
    from facesearch.gallery.vectors.pgvector_store import PgvectorStore

    g = open_gallery()
    x = unit(np.random.default_rng(12), 6)
    g.add_faces(new_faces([f"p{i}" for i in range(6)], x), FP)
    g.close()
    pg = backend == "pgvector"
    if pg:  # nothing may be rebuilt: a refill here fails the test
        monkeypatch.setattr(PgvectorStore, "_refill", lambda self, settings=None: pytest.fail("rebuilt the pgvector index"))
    where = ["-g", str(tmp_path / "g"), *(["--db", url] if url else [])]
    out = run_cli("gallery", "rebuild", "--ef-search", "40", *where, env=NO_ENV).output
    assert ("nothing rebuilt" in out) == pg
    settings = json.loads(run_cli("gallery", "stats", *where, "--json", env=NO_ENV).output)["index_settings"]
    assert (settings["pg_ef_search"], settings["hnsw_ef_search"]) == ((40, 768) if pg else (200, 40))
    assert [h[0].identity for h in open_gallery().search(x, k=1)] == [f"p{i}" for i in range(6)]


def test_a_folder_without_its_database_is_not_taken_for_a_new_gallery(faiss_only, backend, open_gallery, tmp_path):
    """Read commands on a plain folder say it is no gallery and write nothing there; a gallery whose database
    is gone or empty while its index and crops remain is refused, so nothing overwrites what a backup restores."""
    if backend != "sqlite":
        pytest.skip("the SQLite file of the gallery folder")
    from builders import NO_ENV, run_cli
    from facesearch.gallery import Gallery, GalleryError

    (tmp_path / "plain").mkdir()
    for args in (["gallery", "stats"], ["identities", "list"], ["gallery", "rebuild"]):
        r = run_cli(*args, "-g", str(tmp_path / "plain"), ok=False, env=NO_ENV)
        assert r.exit_code != 0 and "not a gallery" in r.output, args
    assert list((tmp_path / "plain").iterdir()) == []
    g = open_gallery()
    g.add_faces(new_faces(["ann", "bob"], unit(np.random.default_rng(13), 2), crops=True), FP)
    assert g.search(unit(np.random.default_rng(13), 2), k=1)  # the index file is written
    g.close()
    db_file = tmp_path / "g" / "gallery.db"
    index_bytes = (tmp_path / "g" / "index.faiss").read_bytes()
    for damage in ("empty", "missing"):
        db_file.write_bytes(b"") if damage == "empty" else db_file.unlink()
        with pytest.raises(GalleryError, match=f"database is {damage}.*index.faiss and crops"):
            Gallery(tmp_path / "g")
        r = run_cli("enroll", "-g", str(tmp_path / "g"), str(tmp_path / "none.jpg"), "--name", "x", ok=False, env=NO_ENV)
        assert r.exit_code != 0 and f"database is {damage}" in r.output
    assert (tmp_path / "g" / "index.faiss").read_bytes() == index_bytes


def test_non_finite_embeddings_are_refused_before_anything_is_stored(open_gallery, tmp_path):
    import torch

    from builders import tiny_checkpoint
    from facesearch.checkpoint import CheckpointError, load_checkpoint
    from facesearch.embed import Embedder
    from facesearch.gallery import GalleryError

    g = open_gallery()
    x = unit(np.random.default_rng(14), 2)
    x[1, 3] = np.nan
    with pytest.raises(GalleryError, match="not finite"):
        g.add_faces(new_faces(["ann", "bob"], x), FP)
    assert g.stats()["faces"] == 0
    loaded = load_checkpoint(tiny_checkpoint(tmp_path / "nan.pt"), device="cpu")
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not finite"):
        Embedder(loaded, device="cpu").embed_crops([Image.new("RGB", (32, 32), (120, 90, 60))])


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(("-shm", "-wal", ".lock"))}


def test_a_folder_refuses_another_gallerys_database_and_loses_nothing(open_gallery, backend, url, tmp_path):
    """`gallery rebuild -g A --db <B's database>` (or $FACESEARCH_DB) deleted most of A's crops as orphans and
    overwrote its index: now every command refuses, naming both galleries, and A's files stay as they were. A folder
    from before gallery.json is known by its index, or by crops the database does not know."""
    from builders import NO_ENV, run_cli
    from facesearch.gallery import Gallery, GalleryError, db

    rng = np.random.default_rng(21)
    a = open_gallery()
    x = unit(rng, 6)
    a.add_faces(new_faces([f"a{i}" for i in range(6)], x, crops=True), FP)
    a.search(x[:1], k=1)  # the index file is written (FAISS store)
    with a.engine.connect() as conn:
        a_uid = conn.exec_driver_sql("SELECT uid FROM gallery_state").scalar()
    a.close()
    folder = tmp_path / "g"
    with Gallery(tmp_path / "b") as b:
        b.add_faces(new_faces(["b0", "b1"], unit(rng, 2), tag="b", crops=True), FP)
        with b.engine.connect() as conn:
            b_uid = conn.exec_driver_sql("SELECT uid FROM gallery_state").scalar()
    b_url = db.default_url(tmp_path / "b")
    before = _files(folder)

    with pytest.raises(GalleryError, match=f"{folder} belongs to gallery {a_uid}.*gallery {b_uid}"):
        Gallery(folder, b_url)
    for args, env in ((["gallery", "rebuild", "--db", b_url], NO_ENV), (["gallery", "check"], {"FACESEARCH_DB": b_url}),
                      (["identities", "remove", "a0", "--yes", "--db", b_url], NO_ENV), (["gallery", "stats"],
                      {"FACESEARCH_DB": b_url})):
        r = run_cli(*args, "-g", folder, ok=False, env=env)
        assert r.exit_code == 1 and "belongs to gallery" in r.stderr and "unexpected" not in r.output, (args, r.output)
    with pytest.raises(GalleryError, match="belongs to gallery"):  # and the other way round
        Gallery(tmp_path / "b", url or db.default_url(folder))

    (folder / "gallery.json").unlink()  # a folder made before folders recorded their database
    with pytest.raises(GalleryError, match="holds the index of gallery" if backend != "pgvector" else "crop files"):
        Gallery(folder, b_url)
    with pytest.raises(GalleryError, match="holds no gallery yet.*index.faiss and crops|database is missing"):
        Gallery(folder, db.default_url(tmp_path / "empty"))  # a database with no gallery in it yet
    assert _files(folder) == {k: v for k, v in before.items() if k != "gallery.json"}
    assert not (tmp_path / "empty").exists()

    g = open_gallery()  # its own database: bound again, whole
    assert json.loads((folder / "gallery.json").read_text())["uid"] == a_uid
    assert len(list((folder / "crops").rglob("*.jpg"))) == 6
    assert_consistent(g)


def test_an_index_copied_from_a_sibling_gallery_is_not_trusted(faiss_only, backend, tmp_path):
    """Two copies of one gallery (the same uid) that each enrolled another person since: the same epoch and face
    ids, other vectors. The sibling's index file named a stranger at 0.99 as the person of this gallery's face, and
    `gallery check` said consistent; its vectors now fail the database's digest: reported, and rebuilt."""
    if backend != "sqlite":
        pytest.skip("copies the gallery folder with its SQLite database")
    import shutil

    from facesearch.gallery import Gallery

    rng = np.random.default_rng(22)
    x = unit(rng, 6)
    with Gallery(tmp_path / "a") as a:
        a.add_faces(new_faces([f"p{i}" for i in range(6)], x), FP)
    shutil.copytree(tmp_path / "a", tmp_path / "sibling")
    ann, stranger = unit(rng, 2)
    with Gallery(tmp_path / "a") as a:
        (ann_id,) = a.add_faces(new_faces(["ann"], ann[None], tag="ann"), FP).ids
    with Gallery(tmp_path / "sibling") as s:
        assert s.add_faces(new_faces(["stranger"], stranger[None], tag="st"), FP).ids == [ann_id]
    shutil.copyfile(tmp_path / "sibling" / "index.faiss", tmp_path / "a" / "index.faiss")
    with Gallery(tmp_path / "a") as a:
        problems = a.check().problems
        assert any("other vectors than the database's for 1 of its 7 faces" in p for p in problems), problems
        hit = a.search(stranger[None], k=1)[0][0]
        assert hit.similarity < 0.9, hit  # the stranger is nobody here
        assert a.search(ann[None], k=1)[0][0].identity == "ann"
        assert_consistent(a)


def test_an_identity_may_not_be_called_unknown(open_gallery):
    """`who` answers "unknown" below the threshold: a person of that name printed "unknown 0.989". Refused wherever an
    identity gets a name; one named so before can still be renamed."""
    from facesearch.gallery import GalleryError
    from facesearch.gallery.models import Identity

    g = open_gallery()
    rng = np.random.default_rng(23)
    g.add_faces(new_faces(["ann"], unit(rng, 1)), FP)
    for name in ("unknown", "Unknown", "  UNKNOWN ", "ｕｎｋｎｏｗｎ"):
        with pytest.raises(GalleryError, match="reserved"):
            g.add_faces(new_faces([name], unit(rng, 1), tag=name), FP)
        for act in (lambda: g.create_identity(name), lambda: g.rename("ann", name),
                    lambda: g.merge("ann", name, create=True)):
            with pytest.raises(GalleryError, match="reserved"):
                act()
    assert [(i.name, i.n_faces) for i in g.identities()] == [("ann", 1)]
    g.create_identity("unknown soldier")  # only the name itself is reserved
    with g._tx.transaction() as s:  # as an earlier facesearch allowed
        s.add(Identity(name="unknown"))
    g.rename("unknown", "was unknown")
    assert "unknown" not in {i.name for i in g.identities()}


def test_uploaded_photos_no_face_refers_to_are_reported_and_deleted(open_gallery, tmp_path):
    """`facesearch serve` keeps enrolled photos in uploads/: one refused as a duplicate stayed there, and so did the
    photos of a subject deleted from the command line, unseen by `gallery check`."""
    from facesearch.gallery import NewFace

    g = open_gallery()
    uploads = tmp_path / "g" / "uploads"
    uploads.mkdir()
    rng = np.random.default_rng(24)
    x = unit(rng, 3)
    shas = ["a" * 64, "b" * 64, "c" * 64]
    for sha in shas:
        (uploads / f"{sha}.jpg").write_bytes(b"photo")
    ids = g.add_faces([NewFace(n, v, source_path=str(uploads / f"{sha}.jpg"), source_sha256=sha)
                       for n, v, sha in zip(["ann", "bob", "bob"], x, shas)], FP).ids
    again = uploads / f"{shas[0]}.png"  # the same photo uploaded once more, as a PNG: refused as a duplicate
    again.write_bytes(b"photo")
    assert not g.discard_upload(uploads / f"{shas[0]}.jpg") and g.discard_upload(again) and not again.exists()
    stray = uploads / f"{'d' * 64}.jpg"
    stray.write_bytes(b"left by a crash")
    assert any("1 uploaded photos in uploads/ belong to no face" in p for p in g.check().problems)
    assert g.rebuild()["orphan_uploads"] == 1 and not stray.exists()
    g.remove("ann")
    assert not (uploads / f"{shas[0]}.jpg").exists()
    g.remove_face(ids[1])
    assert sorted(p.name for p in uploads.iterdir()) == [f"{shas[2]}.jpg"]
    g.remove("bob")
    assert list(uploads.iterdir()) == []
    assert g.check().ok


def test_an_interrupted_rebuild_changes_nothing(faiss_only, open_gallery, monkeypatch):
    """A rebuild with new settings stored them before building; interrupted (minutes into an HNSW build of 10⁵
    faces), it left every later search to build that index first. Now the settings are stored once it is built."""
    from facesearch.gallery import IndexSettings
    from facesearch.gallery.vectors import sync

    g = open_gallery()
    x = unit(np.random.default_rng(25), 8)
    g.add_faces(new_faces([f"p{i}" for i in range(8)], x), FP)
    monkeypatch.setattr(sync, "build", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        g.rebuild(IndexSettings(kind="hnsw"))
    monkeypatch.undo()
    assert g.vector_settings.faiss.kind == "flat" and g.check().ok
    g.rebuild(IndexSettings(kind="hnsw"))
    assert g.stats()["index_layout"] == "hnsw"
    assert_consistent(g)


def test_vectors_changed_outside_facesearch_are_reported_and_rebuild_records_them(faiss_only, open_gallery):
    """An embedding changed by hand in SQL (no epoch bumped, no digest updated): `gallery check` says the recorded
    digest no longer adds up, and a rebuild indexes the vectors as they are and records their digest."""
    import sqlalchemy as sa

    from facesearch.gallery.embeddings import encode_embedding
    from facesearch.gallery.models import Face

    g = open_gallery()
    rng = np.random.default_rng(26)
    ids = g.add_faces(new_faces([f"p{i}" for i in range(4)], unit(rng, 4)), FP).ids
    moved = unit(rng, 1)
    with g.engine.begin() as conn:
        conn.execute(sa.update(Face).where(Face.id == ids[2]).values(embedding=encode_embedding(moved[0])))
    assert any("changed outside facesearch" in p for p in g.check().problems)
    g.rebuild()
    hit = g.search(moved, k=1)[0][0]
    assert hit.face_id == ids[2] and hit.similarity == pytest.approx(1.0, abs=1e-5)
    assert_consistent(g)


def test_both_vector_stores_implement_the_whole_protocol():
    """The Gallery calls its store only through VectorStore: each store has every member, with its parameters."""
    import inspect

    from facesearch.gallery.vectors.base import VectorStore
    from facesearch.gallery.vectors.faiss_store import FaissFileStore
    from facesearch.gallery.vectors.pgvector_store import PgvectorStore

    members = {name: inspect.signature(f) for name, f in vars(VectorStore).items()
               if inspect.isfunction(f) and not name.startswith("_")}
    assert {"add", "search", "rebuild", "describe", "check"} <= set(members)
    for store in (FaissFileStore, PgvectorStore):
        assert store.name in ("faiss", "pgvector")
        for name, signature in members.items():
            assert list(inspect.signature(getattr(store, name)).parameters) == list(signature.parameters), \
                (store.__name__, name)


def test_vector_settings_read_and_write_the_stored_settings_unchanged():
    """Galleries store their vector settings as one flat JSON object (FAISS's, pgvector's as pg_*, the store): an
    existing gallery's object reads into each store's settings and is written back key for key."""
    from facesearch.gallery import IndexSettings, PgvectorSettings, VectorSettings

    stored = {"store": "pgvector", "kind": "hnsw", "pca_dim": None, "min_train": 2000, "train_size": 50_000,
              "hnsw_m": 48, "hnsw_ef_construction": 300, "hnsw_ef_search": 100, "ivf_nlist": None, "ivf_nprobe": 16,
              "ivf_codec": "flat", "pq_m": 32, "max_tombstone_ratio": 0.2, "pg_hnsw_m": 16, "pg_ef_construction": 64,
              "pg_ef_search": 40, "pg_build_memory_mb": 1024}
    settings = VectorSettings.from_dict(stored)
    assert settings.faiss == IndexSettings(kind="hnsw", hnsw_ef_search=100)
    assert settings.pgvector == PgvectorSettings(hnsw_m=16, ef_construction=64, ef_search=40)
    assert settings.in_use is settings.pgvector and settings.to_dict() == stored
    assert list(VectorSettings().to_dict()) == list(stored)
    assert settings.with_search_breadth(80).pgvector.ef_search == 80
    assert settings.with_search_breadth(80).faiss.hnsw_ef_search == 100
    with pytest.raises(ValueError, match="vector store"):
        VectorSettings.from_dict({**stored, "store": "annoy"})


def test_choosing_the_store_of_a_gallery_that_holds_faces_is_refused(tmp_path):
    """`enroll --store` chooses a new gallery's store; a gallery that holds faces is moved by `gallery store`
    only, so the choice is refused there and nothing changes."""
    from facesearch.gallery import Gallery, GalleryError

    with Gallery(tmp_path / "g") as g:
        g.add_faces(new_faces(["ann"], unit(np.random.default_rng(30), 1)), FP)
        before = g.stats()
        with pytest.raises(GalleryError, match="in the faiss store"):
            g.use_store("pgvector", only_if_empty=True)
        assert g.use_store("faiss", only_if_empty=True) == {"store": "faiss", "faces": 1, "moved": False}
        assert g.stats() == before
        assert_consistent(g)
