"""enroll → who → identities → gallery maintenance through the CLI, on real photos, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import STORES, database_url, run_cli as run, tiny_checkpoint



@pytest.fixture(scope="module")
def people(sample_photos, tmp_path_factory):
    """Three people x two photos, one sub-folder each (one name with a quote and a space)."""
    root = tmp_path_factory.mktemp("people")
    for person, name in zip(sorted(sample_photos.iterdir())[:3], ["ann", "bob", "O'Neil Jr"]):
        (root / name).mkdir()
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, root / name / photo.name)
    return root


@pytest.fixture(params=STORES)
def env(request, tmp_path):
    for url in database_url(request.param, tmp_path):
        yield {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": url or "", "store": request.param}


def test_enroll_who_identities_and_maintenance_cycle(env, checkpoint, people, tmp_path):
    from facesearch.gallery import db

    store = ["--store", "pgvector"] if env.pop("store") == "pgvector" else []
    if env["FACESEARCH_DB"]:
        run("db", "upgrade", env=env)  # PostgreSQL is upgraded explicitly
        assert f"latest {db.head_revision()}" in run("db", "current", env=env).output
    out = run("enroll", people, "-c", checkpoint, "--device", "cpu", "--json", *store, env=env).output
    assert json.loads(out)["counts"] == {"enrolled": 6}
    if store:
        assert json.loads(run("gallery", "stats", "--json", env=env).output)["vector_store"] == "pgvector"
    again = json.loads(run("enroll", people, "-c", checkpoint, "--device", "cpu", "--json", env=env).output)
    assert again["counts"] == {"duplicate": 6}

    photo = sorted((people / "bob").glob("*.jpg"))[0]
    annotated = tmp_path / "annotated.jpg"
    answer = json.loads(run("who", photo, "-c", checkpoint, "--device", "cpu", "--json", "--annotate", annotated,
                            "--top-k", "2", env=env).output)
    face = answer["faces"][0]
    assert face["identity"] == "bob" and face["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(face["matches"]) == 2 and face["matches"][1]["name"] != "bob"  # identities, not faces
    assert Image.open(annotated).size == Image.open(photo).size

    run("identities", "rename", "bob", "robert", env=env)
    run("identities", "merge", "ann", "robert", env=env)
    listed = json.loads(run("identities", "list", "--json", env=env).output)
    assert {r["name"]: r["faces"] for r in listed} == {"robert": 4, "O'Neil Jr": 2}
    shown = json.loads(run("identities", "show", "robert", "--json", env=env).output)
    crops = [f["crop_path"] for f in shown["faces"]]
    run("identities", "remove", "robert", "--yes", env=env)
    assert not any(Path(c).exists() for c in crops)
    run("gallery", "rebuild", "--index", "hnsw", env=env)
    assert "consistent" in run("gallery", "check", env=env).output
    stats = json.loads(run("gallery", "stats", "--json", env=env).output)
    if store:  # the vectors and their HNSW index are in PostgreSQL: no index file
        assert stats["faces"] == stats["vector_rows"] == 2 and stats["index_layout"] is None
        assert stats["vector_index_bytes"] > 0
    else:
        assert stats["faces"] == 2 and stats["index_layout"] == "hnsw"
    gone = json.loads(run("who", photo, "-c", checkpoint, "--device", "cpu", "--json", env=env).output)
    assert gone["faces"][0]["matches"][0]["name"] == "O'Neil Jr"


def test_enroll_reports_faceless_group_and_duplicate_photos(checkpoint, people, sample_photos, tmp_path):
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    a, b = (Image.open(p).convert("RGB") for p in sorted((people / "ann").glob("*.jpg")))
    group = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (128, 128, 128))
    group.paste(a, (0, 0))
    group.paste(b, (a.width, 0))
    group.save(tmp_path / "group.jpg")
    Image.new("RGB", (160, 160), (70, 90, 110)).save(tmp_path / "wall.jpg")
    photos = [tmp_path / "group.jpg", tmp_path / "wall.jpg"]
    refused = run("enroll", *photos, "--name", "x", "-c", checkpoint, "--device", "cpu", "--json", env=env, ok=False)
    assert refused.exit_code == 1  # nothing enrolled
    first = json.loads(refused.stdout)
    assert [p["status"] for p in first["photos"]] == ["several_faces", "no_face"]
    assert "--largest" in first["photos"][0]["reason"]
    second = json.loads(run("enroll", photos[0], "--name", "x", "--largest", "-c", checkpoint, "--device", "cpu",
                            "--json", env=env).output)
    assert second["photos"][0]["status"] == "enrolled" and second["photos"][0]["n_faces"] == 2
    third = run("enroll", photos[0], "--name", "y", "--largest", "-c", checkpoint, "--device", "cpu", env=env, ok=False)
    assert third.exit_code == 1 and "already enrolled as 'x'" in third.output


def test_who_says_unknown_below_the_threshold_and_uses_the_calibrated_one(checkpoint, people, tmp_path):
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll, folder_items
    from facesearch.search import who

    embedder = Embedder(checkpoint, device="cpu")
    with Gallery(tmp_path / "g") as g:
        enroll(g, embedder, folder_items(people))
        photo = sorted((people / "ann").glob("*.jpg"))[0]
        assert who(g, embedder, photo).faces[0].identity == "ann"
        assert who(g, embedder, photo, threshold=-1.0).faces[0].identity == "ann"  # the loosest one names anyone
        with pytest.raises(ValueError, match="between -1 and 1"):
            who(g, embedder, photo, threshold=1.01)  # a caller's threshold must be a cosine
        g.set_threshold(1.01, {"source": "test"})  # stricter than any cosine: every face is unknown
        result = who(g, embedder, photo)
        assert result.threshold_calibrated and result.faces[0].identity == "unknown"
        assert result.faces[0].matches[0].name == "ann"  # candidates are still listed


def test_an_uncalibrated_gallery_answers_at_its_models_recorded_threshold(checkpoint, people, tmp_path):
    from facesearch.checkpoint import export_checkpoint
    from facesearch.embed import Embedder
    from facesearch.gallery import DEFAULT_THRESHOLD, Gallery
    from facesearch.gallery.enroll import enroll, folder_items
    from facesearch.search import who

    recorded = export_checkpoint(checkpoint, tmp_path / "recorded.pt", half=False,
                                 record={"threshold": {"value": 1.0, "fpir": 0.01, "measured_on": "test"}})
    photo = sorted((people / "ann").glob("*.jpg"))[0]
    for model, expected in ((checkpoint, (DEFAULT_THRESHOLD, "default")), (recorded, (1.0, "model"))):
        embedder = Embedder(model, device="cpu")
        with Gallery(tmp_path / f"g-{expected[1]}") as g:
            enroll(g, embedder, folder_items(people))
            result = who(g, embedder, photo)
            assert (result.threshold, result.threshold_source) == expected and not result.threshold_calibrated
            if expected[1] == "model":  # 1.0: another photo of ann is refused (its cosine is below 1)
                image = Image.open(photo).convert("RGB")  # the enrolled photo itself scores 1
                other = image.resize((image.width * 9 // 10, image.height * 9 // 10))
                result = who(g, embedder, other)
                assert result.faces[0].identity == "unknown" and result.faces[0].matches[0].name == "ann"
                g.set_threshold(0.0, {"source": "test"})  # calibrating the gallery overrides the model's
                assert who(g, embedder, photo).threshold_source == "calibrated"


def test_who_says_where_the_galleries_threshold_came_from(checkpoint, people, tmp_path):
    """A stored threshold is "calibrated" only when calibrate measured it: one set by hand is "manual", one an
    earlier facesearch stored without recording how is "stored" (its gallery page's hand-set ones said so:
    "manual"); the caller's is "given"."""
    import sqlalchemy as sa

    from facesearch.embed import Embedder
    from facesearch.errors import BadInput
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll, folder_items
    from facesearch.gallery.models import GalleryState
    from facesearch.search import who

    embedder = Embedder(checkpoint, device="cpu")
    photo = sorted((people / "ann").glob("*.jpg"))[0]
    with Gallery(tmp_path / "g") as g:
        enroll(g, embedder, folder_items(people))

        def answered(threshold=None):
            result = who(g, embedder, photo, threshold=threshold)
            stored = g.stored_threshold()
            return (result.threshold, result.threshold_source, result.threshold_calibrated,
                    stored and stored.source, g.stats()["threshold_calibrated"])

        def as_earlier_facesearch_stored(value, meta):
            with g.engine.begin() as conn:
                conn.execute(sa.update(GalleryState).values(threshold=value, threshold_meta=meta))

        assert answered() == (0.5, "default", False, None, False)
        g.set_threshold(0.3, {"by": "me"}, source="manual")
        assert answered() == (0.3, "manual", False, "manual", False)
        assert g.threshold() == (0.3, {"by": "me"})  # how it was set, as given
        assert answered(0.2)[:3] == (0.2, "given", False)
        g.set_threshold(0.4, {"fpir": 0.01})  # what calibrate_gallery stores
        assert answered() == (0.4, "calibrated", True, "calibrated", True)
        as_earlier_facesearch_stored(0.45, {"fpir": 0.01})
        assert answered() == (0.45, "stored", False, "stored", False)
        as_earlier_facesearch_stored(0.35, {"method": "set on the gallery page", "by": "app"})
        assert answered() == (0.35, "manual", False, "manual", False)
        with pytest.raises(BadInput, match="'guessed'"):
            g.set_threshold(0.1, source="guessed")
        assert g.threshold() == (0.35, {"method": "set on the gallery page", "by": "app"})  # unchanged


def test_gallery_stats_shows_the_threshold_who_names_faces_at(checkpoint, people, tmp_path):
    from facesearch.checkpoint import export_checkpoint
    from facesearch.gallery import Gallery

    recorded = export_checkpoint(checkpoint, tmp_path / "recorded.pt", half=False,
                                 record={"threshold": {"value": 0.7, "fpir": 0.1, "measured_on": "test"}})
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people, "-c", recorded, "--device", "cpu", env=env)

    def shown():
        stats = json.loads(run("gallery", "stats", "--json", env=env).stdout)
        return stats["threshold"], stats["threshold_source"], stats["threshold_calibrated"], "model_problem" in stats

    assert shown() == (0.7, "model", False, False)  # never calibrated: the model's (it showed the 0.5 default)
    with Gallery(tmp_path / "g") as g:
        g.set_threshold(0.4, {"source": "test"})
    assert shown() == (0.4, "calibrated", True, False)
    recorded.rename(tmp_path / "moved.pt")  # the gallery's model is gone: only a threshold of its own is shown
    with Gallery(tmp_path / "g") as g:
        g.set_threshold(0.45, source="manual")
    assert shown() == (0.45, "manual", False, False)  # the model's threshold does not apply: it is not read


def test_who_answers_many_photos_in_one_run_as_each_alone_and_goes_on_past_a_bad_one(checkpoint, people, tmp_path):
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people, "-c", checkpoint, "--device", "cpu", env=env)
    photos = tmp_path / "photos"
    photos.mkdir()
    for person in ("ann", "bob"):
        for photo in sorted((people / person).glob("*.jpg")):
            shutil.copy(photo, photos / f"{person}-{photo.name}")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    many = run("who", photos, "--device", "cpu", "--json", env=env, ok=False)
    assert many.exit_code == 2  # one photo could not be read, the others were answered
    assert "answering: 5/5 (100 %" in many.stderr  # progress shows as plain lines when stderr is not a terminal
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert [Path(r["photo"]).name for r in lines] == sorted(p.name for p in photos.iterdir())
    broken = next(r for r in lines if r["photo"].endswith("broken.jpg"))
    assert broken["error"]["status"] in ("not_an_image", "unreadable", "truncated")
    for r in lines:
        if "error" in r:
            continue
        alone = json.loads(run("who", r["photo"], "--device", "cpu", "--json", env=env).stdout)
        assert [f["identity"] for f in r["faces"]] == [f["identity"] for f in alone["faces"]]
        # photos detected together are padded to one canvas, which moves MTCNN's boxes by a few pixels
        # (facesearch.data.detect): the same people, similarities within rounding of those crops
        sims = [m["similarity"] for f in r["faces"] for m in f["matches"]]
        assert sims == pytest.approx([m["similarity"] for f in alone["faces"] for m in f["matches"]], abs=1e-3)
    text = run("who", tmp_path / "missing.jpg", photos, "--device", "cpu", env=env, ok=False)
    assert text.exit_code == 2 and "missing.jpg: unreadable" in text.stdout
    assert "# threshold 0.500 (default)" in text.stdout and len(text.stdout.splitlines()) == 1 + 6


def test_aggregate_scores_each_identity_by_its_best_face():
    from facesearch.gallery import FaceHit
    from facesearch.search import aggregate

    hits = [FaceHit(1, "a", 0.9, None, None), FaceHit(2, "a", 0.8, None, None), FaceHit(3, "b", 0.7, None, None),
            FaceHit(4, "c", 0.6, None, None), FaceHit(5, "b", 0.95, None, None)]
    assert [(m.name, m.face_id) for m in aggregate(hits, top_k=2)] == [("b", 5), ("a", 1)]


def test_reembed_moves_the_gallery_to_a_new_model(checkpoint, people, tmp_path):
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    run("enroll", people / "ann", "--name", "ann", "-c", checkpoint, "--device", "cpu", env=env)
    refused = run("enroll", people / "bob", "--name", "bob", "-c", other, "--device", "cpu", ok=False, env=env)
    assert refused.exit_code == 1 and "reembed" in refused.output
    assert "2 faces re-embedded" in run("gallery", "reembed", "-c", other, "--device", "cpu", env=env).output
    photo = sorted((people / "ann").glob("*.jpg"))[1]
    answer = json.loads(run("who", photo, "-c", other, "--device", "cpu", "--json", env=env).output)
    assert answer["faces"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert run("who", photo, "-c", checkpoint, "--device", "cpu", ok=False, env=env).exit_code == 1


def test_a_gallery_of_an_earlier_base_model_says_how_to_move_to_the_shipped_one(checkpoint, people, tmp_path):
    import sqlite3

    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people / "ann", "--name", "ann", "-c", checkpoint, "--device", "cpu", env=env)
    with sqlite3.connect(tmp_path / "g" / "gallery.db") as conn:  # as if enrolled with an earlier base model
        conn.execute("UPDATE gallery_state SET model_source = 'base'")
    refused = run("who", sorted((people / "ann").glob("*.jpg"))[1], "--device", "cpu", ok=False, env=env)
    assert refused.exit_code == 1 and "an earlier base model" in refused.output
    assert "facesearch gallery reembed --checkpoint base" in refused.output and "Traceback" not in refused.output


def test_embed_command_writes_vectors_and_rows(checkpoint, people, tmp_path):
    photos = sorted((people / "ann").glob("*.jpg"))
    run("embed", *photos, "-c", checkpoint, "--device", "cpu", "--out", tmp_path / "e.npy")
    x = np.load(tmp_path / "e.npy")
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert x.shape == (2, 64) and [r["path"] for r in rows] == [str(p) for p in photos]



def test_who_annotate_never_overwrites_a_photo_the_gallery_or_an_existing_file(checkpoint, people, tmp_path):
    """`who --annotate` wrote over any file it was given: the photo answered, a stored crop. Those are refused, and
    an existing file unless --overwrite, before any work (exit 2), each with its reason."""
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people, "-c", checkpoint, "--device", "cpu", env=env)
    photo = tmp_path / "q.jpg"
    shutil.copy(sorted((people / "ann").glob("*.jpg"))[0], photo)
    crop = sorted((tmp_path / "g" / "crops").rglob("*.jpg"))[0]
    kept = tmp_path / "kept.jpg"
    kept.write_bytes(b"not to be lost")
    before = {p: p.read_bytes() for p in (photo, crop, kept)}
    for target, says in ((photo, "a photo being answered"), (crop, "inside the gallery folder"),
                         (tmp_path / "g" / "new.png", "inside the gallery folder"), (kept, "exists already"),
                         (tmp_path / "out.txt", "not an image format"), (tmp_path, "a folder")):
        r = run("who", photo, "-c", checkpoint, "--device", "cpu", "--annotate", target, env=env, ok=False)
        assert r.exit_code == 2 and says in r.stderr, (target, r.output)
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "g" / "new.png").exists()
    run("who", photo, "-c", checkpoint, "--device", "cpu", "--annotate", kept, "--overwrite", env=env)
    assert Image.open(kept).size == Image.open(photo).size
    run("who", photo, "-c", checkpoint, "--device", "cpu", "--annotate", photo, "--overwrite", env=env, ok=False)
    assert photo.read_bytes() == before[photo]  # --overwrite never covers the photo itself

    folder = tmp_path / "photos"  # several photos are drawn into a folder: the same rules for each file
    folder.mkdir()
    for p in sorted((people / "bob").glob("*.jpg")):
        shutil.copy(p, folder / p.name)
    first = folder / f"00000-{sorted(folder.iterdir())[0].stem}.jpg"
    r = run("who", folder, "-c", checkpoint, "--device", "cpu", "--annotate", tmp_path / "g" / "crops", env=env,
            ok=False)
    assert r.exit_code == 2 and "inside the gallery folder" in r.stderr
    out = tmp_path / "drawn"
    out.mkdir()
    first_out = out / first.name
    first_out.write_bytes(b"an earlier run")
    r = run("who", folder, "-c", checkpoint, "--device", "cpu", "--annotate", out, env=env, ok=False)
    assert r.exit_code == 2 and "exists already" in r.stderr and first_out.read_bytes() == b"an earlier run"
    run("who", folder, "-c", checkpoint, "--device", "cpu", "--annotate", out, "--overwrite", env=env)
    assert len(list(out.iterdir())) == 2 and Image.open(first_out).size


def test_enroll_refuses_the_name_who_answers_for_strangers(checkpoint, people, tmp_path):
    """A person named "unknown" made `who` print "unknown 0.989": refused for --name and for a person folder."""
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    r = run("enroll", people / "ann", "--name", "Unknown", "-c", checkpoint, "--device", "cpu", env=env, ok=False)
    assert r.exit_code == 1 and "reserved" in r.stderr
    folder = tmp_path / "people"
    shutil.copytree(people / "ann", folder / "unknown")
    shutil.copytree(people / "bob", folder / "bob")
    r = run("enroll", folder, "-c", checkpoint, "--device", "cpu", "--json", env=env, ok=False)
    statuses = {p["name"]: p["status"] for p in json.loads(r.stdout)["photos"]}
    assert r.exit_code == 2 and statuses == {"unknown": "bad_name", "bob": "enrolled"}
    assert [r["name"] for r in json.loads(run("identities", "list", "--json", env=env).stdout)] == ["bob"]


def _without_write_access(folder: Path, work):
    """``work()``'s result, computed where ``folder`` may be read but not written: ``chmod -R a-w``, and as root
    (whom permissions do not stop) in a forked child that drops the capabilities that let root write anyway
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) — what another user, or a read-only mount, sees."""
    import ctypes
    import os
    import pickle
    import stat

    def chmod(write: bool):
        for p in [folder, *folder.rglob("*")]:
            mode = p.stat().st_mode
            p.chmod(mode | stat.S_IWUSR if write else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    chmod(False)
    try:
        if os.geteuid() != 0:
            return work()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                import faiss
                import torch

                torch.set_num_threads(1)  # OpenMP's threads do not survive a fork
                faiss.omp_set_num_threads(1)

                class Header(ctypes.Structure):
                    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

                class Data(ctypes.Structure):
                    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                                ("inheritable", ctypes.c_uint32)]

                libc = ctypes.CDLL(None, use_errno=True)
                header, data = Header(0x20080522, 0), (Data * 2)()
                assert libc.capget(ctypes.byref(header), data) == 0
                drop = (1 << 1) | (1 << 2) | (1 << 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
                data[0].effective &= ~drop
                data[0].permitted &= ~drop
                assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
                assert not os.access(folder, os.W_OK)
                result = ("ok", work())
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = ("error", repr(e))
            os.write(write, pickle.dumps(result))
            os._exit(0)
        os.close(write)
        data = b"".join(iter(lambda: os.read(read, 1 << 16), b""))
        os.close(read)
        os.waitpid(pid, 0)
        status, value = pickle.loads(data)
        assert status == "ok", value
        return value
    finally:
        chmod(True)


def test_a_gallery_without_write_access_is_read(checkpoint, people, tmp_path):
    """`who` on a read-only gallery (a read-only mount, another user's) failed: "this command writes to it". Reading
    commands now open the database read-only (SQLite mode=ro, immutable where even its shared-memory file cannot be
    made) and keep a stale index in memory: they work, and write nothing."""
    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people, "-c", checkpoint, "--device", "cpu", env=env)
    (tmp_path / "g" / "index.faiss").unlink()  # a stale or missing index is synchronised in memory only
    photo = sorted((people / "ann").glob("*.jpg"))[0]
    files = {p: p.read_bytes() for p in (tmp_path / "g").rglob("*") if p.is_file()}
    commands = [("who", photo, "-c", checkpoint, "--device", "cpu", "--json"), ("gallery", "stats"),
                ("gallery", "check"), ("identities", "list"), ("db", "current")]

    def read_all():
        return [(r.exit_code, r.stdout, r.stderr) for r in (run(*c, env=env, ok=False) for c in commands)]

    results = _without_write_access(tmp_path / "g", read_all)
    for command, (code, out, err) in zip(commands, results):
        assert code == (1 if command[1] == "check" else 0), (command, out, err)  # check: the index is missing
        assert "read-only" not in err and "Traceback" not in err, (command, err)
    assert json.loads(results[0][1])["faces"][0]["identity"] == "ann"
    assert {p: p.read_bytes() for p in (tmp_path / "g").rglob("*") if p.is_file()} == files


def test_a_full_disk_is_named_and_searching_needs_no_space(checkpoint, people, tmp_path, monkeypatch, caplog):
    """A full disk said "database error: disk I/O error", naming no file, and failed searches too. Writing now
    names the database and the disk; searching writes nothing to the database, and an index it cannot save is
    kept in memory. (SQLite's own error, SQLITE_FULL, is raised here at each write; a real full disk, a 3 MB tmpfs,
    was checked by hand.)"""
    import errno
    import sqlite3

    from sqlalchemy import event

    from facesearch.gallery import db
    from facesearch.gallery.vectors.index import FaceIndex

    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people / "ann", "--name", "ann", "-c", checkpoint, "--device", "cpu", env=env)
    real_create = db.create_engine

    def refuse_writes(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")

    def full_disk(url, read_only=False):
        engine = real_create(url, read_only=read_only)
        event.listen(engine, "before_cursor_execute", refuse_writes)
        return engine

    def no_space(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(db, "create_engine", full_disk)
    monkeypatch.setattr(FaceIndex, "write", no_space)
    (tmp_path / "g" / "index.faiss").unlink()
    r = run("enroll", people / "bob", "--name", "bob", "-c", checkpoint, "--device", "cpu", env=env, ok=False)
    assert r.exit_code == 1 and str(tmp_path / "g" / "gallery.db") in r.stderr and "disk is full" in r.stderr, r.output
    photo = sorted((people / "ann").glob("*.jpg"))[1]
    answer = run("who", photo, "-c", checkpoint, "--device", "cpu", "--json", env=env)
    assert json.loads(answer.stdout)["faces"][0]["identity"] == "ann"
    assert "No space left on device" in caplog.text and "in memory only" in caplog.text


def test_who_says_when_it_must_first_build_the_index(checkpoint, people, tmp_path, monkeypatch, caplog):
    """After an interrupted `gallery rebuild --index hnsw` (of an earlier facesearch: the new settings stored, the
    index file still the old one), `who` built the HNSW index of 10⁵ faces for minutes without a word. It says
    what it does and why; here with a small gallery and the announcement threshold lowered to it."""
    import sqlite3

    from facesearch.gallery.vectors import freshness

    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people, "-c", checkpoint, "--device", "cpu", env=env)
    with sqlite3.connect(tmp_path / "g" / "gallery.db") as conn:
        settings = json.loads(conn.execute("SELECT index_settings FROM gallery_state").fetchone()[0])
        conn.execute("UPDATE gallery_state SET index_settings = ?, epoch = epoch + 1",
                     (json.dumps({**settings, "kind": "hnsw"}),))
    conn.close()
    monkeypatch.setattr(freshness, "ANNOUNCE_FACES", 6, raising=False)
    photo = sorted((people / "ann").glob("*.jpg"))[0]
    with caplog.at_level("WARNING", logger="facesearch"):
        run("who", photo, "-c", checkpoint, "--device", "cpu", env=env)
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    announced = [r for r in warned if "built with other settings" in r.getMessage()
                 and "building the hnsw index of 6 faces" in r.getMessage()
                 and "(a rebuild of the index builds it ahead of time)" in r.getMessage()]
    assert announced, [r.getMessage() for r in warned]
    from facesearch.cli._app import _PrintableFormatter  # the CLI's log line names the command that does it

    line = _PrintableFormatter("%(levelname)s %(name)s: %(message)s").format(announced[0])
    assert line.endswith("ahead of time) (`facesearch gallery rebuild`)"), line
    caplog.clear()
    run("who", photo, "-c", checkpoint, "--device", "cpu", env=env)
    assert "building" not in caplog.text  # the index built was saved


def test_service_uploads_refused_as_duplicates_or_left_by_a_deleted_subject_are_not_kept(checkpoint, people, tmp_path):
    """An upload refused as a duplicate (HTTP 409) stayed in the gallery's uploads/, and so did the photos of a
    subject deleted from the command line."""
    from facesearch.serve.service import Service

    env = {"FACESEARCH_GALLERY": str(tmp_path / "g"), "FACESEARCH_DB": ""}
    run("enroll", people / "ann", "--name", "ann", "-c", checkpoint, "--device", "cpu", env=env)
    uploads = tmp_path / "g" / "uploads"
    service = Service(tmp_path / "g", checkpoint=checkpoint, device="cpu")
    try:
        ann = sorted((people / "ann").glob("*.jpg"))[0].read_bytes()
        assert service.add_photo("someone", ann, "ann.jpg").status == "duplicate"  # enrolled from the CLI before
        assert not uploads.exists() or list(uploads.iterdir()) == []
        bob = sorted((people / "bob").glob("*.jpg"))[0].read_bytes()
        assert service.add_photo("bob", bob, "bob.jpg").status == "enrolled"
        assert service.add_photo("bob", bob, "bob.png").status == "duplicate"  # the same bytes, named otherwise
        assert [p.suffix for p in uploads.iterdir()] == [".jpg"]
    finally:
        service.close()
    run("identities", "remove", "bob", "--yes", env=env)
    assert list(uploads.iterdir()) == []
    assert "consistent" in run("gallery", "check", env=env).stdout


def test_who_draws_on_the_photo_it_decoded_each_photo_decoded_once(checkpoint, people, tmp_path, monkeypatch):
    """`who --annotate` decoded every photo twice (to answer, then to draw); the answers are drawn on the photo
    the embedder decoded."""
    import facesearch.data.images
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll
    from facesearch.search import WhoResult, who, who_many

    photos = sorted(people.rglob("*.jpg"))
    with Gallery(tmp_path / "g") as g:
        embedder = Embedder.for_queries(checkpoint, "cpu")
        enroll(g, embedder, [(p, p.parent.name) for p in photos[:2]])
        decoded, load_image = [], facesearch.data.images.load_image
        monkeypatch.setattr(facesearch.data.images, "load_image",
                            lambda source, **kw: decoded.append(source) or load_image(source, **kw))
        one = who(g, embedder, photos[0], annotate_into=tmp_path / "one.jpg")
        drawn = [tmp_path / f"{n}.png" for n in range(len(photos))]
        many = list(who_many(g, embedder, photos, batch_size=4, annotate_into=drawn))
    assert one.faces and Image.open(tmp_path / "one.jpg").size == Image.open(photos[0]).size
    assert all(isinstance(r, WhoResult) for r in many) and all(d.is_file() for d in drawn)
    assert list(map(str, decoded)) == list(map(str, [photos[0], *photos]))  # once each: answered and drawn
