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

