"""facesearch serve's API through FastAPI's test client: every endpoint, authentication and key rights, bad
uploads answered 4xx with a reason, concurrent recognitions beside an enrollment, and the CLI around it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import socket
import threading
import time
from urllib.parse import quote

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

from fastapi.testclient import TestClient  # noqa: E402

from builders import all_queued_then_released, enrolled_gallery, png_with_size, run_cli  # noqa: E402

PEOPLE = 3


@pytest.fixture(scope="module")
def served(sample_photos, tmp_path_factory):
    """A gallery of 3 sample people x 2 photos (tiny random model), its keys, and spare photos."""
    from facesearch.gallery import Gallery

    root = tmp_path_factory.mktemp("serve")
    checkpoint, photos = enrolled_gallery(root, sample_photos, PEOPLE)
    with Gallery(root / "gallery") as g:
        keys = {"full": g.create_key("app"), "read": g.create_key("viewer", read_only=True)}
    return root, checkpoint, photos, keys


@pytest.fixture()
def client(served, tmp_path):
    """A fresh copy of the gallery per test (tests change it) behind a TestClient."""
    from facesearch.serve.app import create_app
    from facesearch.serve.service import Limits, Service

    root, checkpoint, _, _ = served
    shutil.copytree(root / "gallery", tmp_path / "gallery")
    service = Service(tmp_path / "gallery", checkpoint=checkpoint, limits=Limits(max_bytes=2_000_000, max_pixels=4_000_000))
    with TestClient(create_app(service)) as c:
        yield c
    service.close()


def auth(served, kind="full") -> dict:
    return {"X-API-Key": served[3][kind]}


def upload(path, name=None) -> dict:
    return {"photo": (name or path.name, path.read_bytes(), "image/jpeg")}


def error_of(response) -> dict:
    return response.json()["error"]


def test_recognize_names_an_enrolled_photo_by_upload_and_by_base64(client, served, tmp_path):
    _, _, photos, _ = served
    name, files = next(iter(photos.items()))
    r = client.post("/api/v1/recognize?top_k=2", files=upload(files[0]), headers=auth(served, "read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["faces"]) == 1 and body["photo"] == files[0].name
    face = body["faces"][0]
    assert face["identity"] == name and face["similarity"] > 0.99 and len(face["matches"]) == 2
    assert len(face["box"]) == 4 and 0 < face["det_prob"] <= 1
    assert face["matches"][0]["crop_url"] == f"/api/v1/faces/{face['matches'][0]['face_id']}/crop"
    assert "source_path" not in face["matches"][0]  # the server's paths stay on the server
    assert set(body["timings_ms"]) == {"decode", "queued", "detect_embed_search", "total"}
    assert body["threshold_source"] == "default"
    again = client.post("/api/v1/recognize", json={"image_base64": base64.b64encode(files[0].read_bytes()).decode(),
                                                   "filename": "x.jpg"}, headers=auth(served))
    assert again.status_code == 200 and again.json()["faces"][0]["identity"] == name
    smaller = tmp_path / "smaller.jpg"  # another photo of the person (the enrolled one itself scores 1)
    with Image.open(files[0]) as image:
        image.resize((image.width * 9 // 10, image.height * 9 // 10)).save(smaller)
    strict = client.post("/api/v1/recognize?threshold=1", files=upload(smaller), headers=auth(served))
    assert strict.json()["faces"][0]["identity"] == "unknown" and strict.json()["threshold_source"] == "given"


def test_every_request_needs_a_key_and_read_only_keys_cannot_write(client, served):
    _, _, photos, _ = served
    photo = next(iter(photos.values()))[0]
    for method, url in (("get", "/api/v1/subjects"), ("post", "/api/v1/recognize"), ("get", "/api/v1/gallery")):
        r = getattr(client, method)(url)
        assert r.status_code == 401 and "X-API-Key" in error_of(r)["reason"]
    r = client.get("/api/v1/subjects", headers={"X-API-Key": "fs_not-a-key"})
    assert r.status_code == 401 and "not known" in error_of(r)["reason"]
    assert client.get("/api/v1/subjects", headers={"Authorization": f"Bearer {served[3]['read']}"}).status_code == 200
    read = auth(served, "read")
    refused = [client.post("/api/v1/subjects", json={"name": "x"}, headers=read),
               client.patch("/api/v1/subjects/anyone", json={"name": "y"}, headers=read),
               client.delete("/api/v1/faces/1", headers=read),
               client.post(f"/api/v1/subjects/{next(iter(photos))}/faces", files=upload(photo), headers=read)]
    for r in refused:
        assert r.status_code == 403 and "read-only" in error_of(r)["reason"]
    assert client.get("/health").json()["ok"] is True  # the one open endpoint


def test_bad_uploads_are_answered_4xx_with_the_reason(client, served, tmp_path):
    headers = auth(served)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    cases = {
        "not_an_image": client.post("/api/v1/recognize", files=upload(text), headers=headers),
        "empty": client.post("/api/v1/recognize", files={"photo": ("e.jpg", b"", "image/jpeg")}, headers=headers),
        "bomb": client.post("/api/v1/recognize", files=upload(png_with_size(tmp_path / "b.png", 5000, 5000)),
                            headers=headers),
        "big": client.post("/api/v1/recognize", files={"photo": ("big.jpg", b"\xff" * 2_100_000, "image/jpeg")},
                           headers=headers),
        "no_field": client.post("/api/v1/recognize", files={"other": ("a.jpg", b"x", "image/jpeg")}, headers=headers),
        "bad_base64": client.post("/api/v1/recognize", json={"image_base64": "%%%"}, headers=headers),
        "no_body": client.post("/api/v1/recognize", content=b"raw", headers={**headers, "content-type": "text/plain"}),
        "top_k": client.post("/api/v1/recognize?top_k=0", files=upload(text), headers=headers),
        "threshold": client.post("/api/v1/recognize?threshold=2", files=upload(text), headers=headers),
    }
    expected = {"not_an_image": (422, "not_an_image", "notes.jpg"), "empty": (422, "not_an_image", "0 bytes"),
                "bomb": (422, "too_large", "b.png"), "big": (413, "too_large", "allowed"),
                "no_field": (422, "missing_photo", "photo"), "bad_base64": (422, "not_an_image", "base64"),
                "no_body": (415, "missing_photo", "multipart"), "top_k": (422, "invalid_request", "top_k"),
                "threshold": (422, "invalid_request", "threshold")}
    for case, (code, status, words) in expected.items():
        r = cases[case]
        assert r.status_code == code, (case, r.text)
        assert error_of(r)["status"] == status and words in error_of(r)["reason"], (case, r.text)
        assert "Traceback" not in r.text


def test_subjects_list_create_rename_merge_delete(client, served):
    headers = auth(served)
    names = sorted(served[2])
    page = client.get("/api/v1/subjects?offset=1&limit=1", headers=headers).json()
    assert page["total"] == PEOPLE and [s["name"] for s in page["subjects"]] == names[1:2]
    created = client.post("/api/v1/subjects", json={"name": "  Zoë  "}, headers=headers)
    assert created.status_code == 201 and created.json() == {**created.json(), "name": "Zoë", "faces": 0}
    assert client.post("/api/v1/subjects", json={"name": "Zoë"}, headers=headers).status_code == 409
    bad = client.post("/api/v1/subjects", json={"name": "a\u0000b"}, headers=headers)
    assert bad.status_code == 400 and "control" in error_of(bad)["reason"]
    one = client.get(f"/api/v1/subjects/{names[0]}", headers=headers).json()
    assert one["faces"] == 2 and len(one["face_list"]) == 2
    renamed = client.patch(f"/api/v1/subjects/{names[0]}", json={"name": "Ada / Lovelace"}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["name"] == "Ada / Lovelace"
    assert client.get("/api/v1/subjects/Ada%20%2F%20Lovelace/faces", headers=headers).json()["subject"] == "Ada / Lovelace"
    merged = client.post("/api/v1/subjects/Ada%20%2F%20Lovelace/merge", json={"into": names[1]}, headers=headers)
    assert merged.status_code == 200 and merged.json()["moved_faces"] == 2
    assert client.get(f"/api/v1/subjects/{names[1]}", headers=headers).json()["faces"] == 4
    missing = client.get("/api/v1/subjects/Ada%20%2F%20Lovelace", headers=headers)
    assert missing.status_code == 404 and "no identity" in error_of(missing)["reason"]
    assert "/" not in error_of(missing)["reason"].replace("Ada / Lovelace", "")  # no server path in the answer
    gone = client.delete(f"/api/v1/subjects/{names[1]}", headers=headers)
    assert gone.json() == {"deleted": names[1], "removed_faces": 4}
    assert client.get("/api/v1/gallery/check", headers=headers).json()["ok"] is True


def test_faces_add_download_and_delete(client, served, tmp_path):
    headers = auth(served)
    name, files = next(iter(served[2].items()))
    added = client.post(f"/api/v1/subjects/{name}/faces", files=upload(files[5]), headers=headers)
    assert added.status_code == 201 and added.json()["status"] == "enrolled", added.text
    face_id = added.json()["face_id"]
    duplicate = client.post(f"/api/v1/subjects/{name}/faces", files=upload(files[5]), headers=headers)
    assert duplicate.status_code == 409 and duplicate.json()["enrolled_as"] == name
    blank = tmp_path / "wall.png"
    Image.new("RGB", (240, 200), (200, 190, 180)).save(blank)
    faceless = client.post(f"/api/v1/subjects/{name}/faces", files=upload(blank), headers=headers)
    assert faceless.status_code == 422 and error_of(faceless)["status"] == "no_face"
    unknown = client.post("/api/v1/subjects/nobody/faces", files=upload(files[6]), headers=headers)
    assert unknown.status_code == 404
    crop = client.get(f"/api/v1/faces/{face_id}/crop", headers=headers)
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg" and crop.content[:2] == b"\xff\xd8"
    assert client.get(f"/api/v1/faces/{face_id}", headers=headers).json()["subject"] == name
    uploads = served_gallery(client) / "uploads"
    kept = uploads / f"{hashlib.sha256(files[5].read_bytes()).hexdigest()}.jpg"
    assert sorted(uploads.iterdir()) == [kept]  # the enrolled photo is kept (reembed re-cuts it); the blank one is not
    deleted = client.delete(f"/api/v1/faces/{face_id}", headers=headers)
    assert deleted.json() == {"deleted": face_id, "subject": name}
    assert client.get(f"/api/v1/faces/{face_id}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/subjects/{name}", headers=headers).status_code == 200  # the subject stays
    assert not kept.exists()  # nothing refers to the uploaded photo any more
    assert client.get("/api/v1/gallery/check", headers=headers).json()["ok"] is True


def served_gallery(client):
    return client.app.state.service.gallery.folder


def test_gallery_stats_and_openapi(client, served):
    from facesearch.gallery import DEFAULT_THRESHOLD

    stats = client.get("/api/v1/gallery", headers=auth(served, "read")).json()
    assert stats["identities"] == PEOPLE and stats["faces"] == 2 * PEOPLE and "folder" not in stats
    assert stats["database"] == "sqlite" and stats["model_source"] == served[1].name  # no server path
    assert (stats["threshold"], stats["threshold_source"]) == (DEFAULT_THRESHOLD, "default")  # what recognize uses
    spec = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/recognize", "/api/v1/subjects", "/api/v1/explain", "/api/v1/faces/{face_id}/crop"} <= set(spec["paths"])
    docs = client.get("/api/docs")  # Swagger UI from this server's files, not FastAPI's CDN copy
    assert docs.status_code == 200 and "/api/v1/openapi.json" in docs.text and "cdn" not in docs.text.lower()


def test_explain_returns_the_figures_and_serves_the_report(client, served):
    name, files = next(iter(served[2].items()))
    r = client.post("/api/v1/explain", files=upload(files[0]), headers=auth(served, "read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == name and body["report_url"].startswith("/explain/")
    assert [layer["kind"] for layer in body["layers"]].count("conv") == 13  # the 13 convs, then fc6 and fc7
    page = client.get(body["report_url"], headers=auth(served, "read"))
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get(body["report_url"], follow_redirects=False).status_code == 303  # pages send a caller without a key to log in
    assert client.get("/explain/x/../../etc/passwd", headers=auth(served)).status_code == 404


def test_uploads_are_decoded_from_memory_and_explain_uses_the_services_own_gallery_and_embedder(client, served,
                                                                                             monkeypatch):
    """No upload goes through a scratch file; explain builds no detector and opens no gallery of its own; an
    enrolled upload is still kept (by content hash) for `gallery reembed`."""
    import facesearch.data.detect
    import facesearch.gallery
    import facesearch.serve.service

    service = client.app.state.service
    name, files = next(iter(served[2].items()))
    monkeypatch.setattr(facesearch.data.detect, "FaceDetector", None)  # building one would fail
    monkeypatch.setattr(facesearch.gallery, "Gallery", None)  # as would opening a gallery
    decoded, load_image = [], facesearch.serve.service.load_image
    monkeypatch.setattr(facesearch.serve.service, "load_image",
                        lambda source, **kw: decoded.append(type(source)) or load_image(source, **kw))
    assert client.post("/api/v1/recognize", files=upload(files[0]), headers=auth(served)).status_code == 200
    r = client.post("/api/v1/explain", files=upload(files[0], "mine.jpg"), headers=auth(served, "read"))
    assert r.status_code == 200, r.text
    assert r.json()["query"] == "mine.jpg" and r.json()["answer"] == name
    spare = files[4]
    added = client.post(f"/api/v1/subjects/{name}/faces", files=upload(spare), headers=auth(served))
    assert added.status_code == 201 and added.json()["status"] == "enrolled", added.text
    scratch = [p.relative_to(service.scratch).parts[0] for p in service.scratch.rglob("*") if p.is_file()]
    assert set(scratch) == {"explain"}  # the report's files only
    assert decoded == [bytes] * 3  # each upload decoded once, from memory
    kept = service.gallery.folder / "uploads" / f"{hashlib.sha256(spare.read_bytes()).hexdigest()}.jpg"
    assert kept.read_bytes() == spare.read_bytes()


def test_recognitions_run_beside_an_enrollment_without_losing_anything(client, served):
    headers = auth(served)
    name, files = next(iter(served[2].items()))
    results, errors = [], []

    def recognize():
        try:
            for _ in range(3):
                r = client.post("/api/v1/recognize", files=upload(files[0]), headers=headers)
                results.append((r.status_code, r.json()["faces"][0]["identity"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=recognize) for _ in range(4)]
    for t in threads:
        t.start()
    added = [client.post(f"/api/v1/subjects/{name}/faces", files=upload(f), headers=headers) for f in files[6:9]]
    for t in threads:
        t.join()
    assert not errors and results == [(200, name)] * 12
    assert all(a.status_code == 201 for a in added), [a.text for a in added]
    stats = client.get("/api/v1/gallery", headers=headers).json()
    assert stats["faces"] == 2 * PEOPLE + 3
    assert client.get("/api/v1/gallery/check", headers=headers).json()["ok"] is True


@pytest.fixture()
def one_slot(served, tmp_path, monkeypatch):
    """A service with one compute slot behind a TestClient, and the photo counts of its detector's calls."""
    from facesearch.serve.app import create_app
    from facesearch.serve.service import Service

    root, checkpoint, _, _ = served
    shutil.copytree(root / "gallery", tmp_path / "gallery")
    service = Service(tmp_path / "gallery", checkpoint=checkpoint, compute_slots=1)
    detector, batches = service.embedder.detector, []
    detect = detector.detect
    monkeypatch.setattr(detector, "detect", lambda images: batches.append(len(images)) or detect(images))
    with TestClient(create_app(service), raise_server_exceptions=False) as c:  # a 500 is answered, as served
        yield service, c, batches
    service.close()


def recognize_at_once(service, c, headers, photos: dict, url: str = "/api/v1/recognize", batcher=None,
                      data: dict | None = None) -> dict:
    """POST each of ``photos`` ({name: (filename, bytes)}, or {name: {field: (filename, bytes)}}) to ``url`` from a
    thread of its own while the only compute slot is held, so that all of them wait for it together in ``batcher``
    (the recognitions'); each one's response, by name."""
    answers = {}
    batcher = batcher or service._recognizing

    def post(name, files):
        files = {"photo": files} if isinstance(files, tuple) else files
        answers[name] = c.post(url, files={k: (*v, "image/jpeg") for k, v in files.items()}, data=data,
                               headers=headers)

    all_queued_then_released(service._computing, batcher._queue,
                             [lambda n=name, p=photo: post(n, p) for name, photo in photos.items()])
    return answers


def test_concurrent_recognitions_are_one_batch_and_each_gets_its_own_faces(served, one_slot, tmp_path):
    """Requests waiting for a compute slot are detected and embedded together (one detector call for all), and
    each answer is its own photo's: its name, size and faces."""
    service, c, batches = one_slot
    photos = {name: (files[0].name, files[0].read_bytes()) for name, files in served[2].items()}
    grey = tmp_path / "grey.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(grey)
    photos["nobody"] = ("grey.png", grey.read_bytes())
    answers = recognize_at_once(service, c, auth(served), photos)
    assert batches == [len(photos)]
    for name, r in answers.items():
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["photo"] == photos[name][0]
        if name == "nobody":
            assert body["faces"] == [] and (body["width"], body["height"]) == (200, 150)
        else:
            assert [f["identity"] for f in body["faces"]] == [name] and body["faces"][0]["similarity"] > 0.99
            with Image.open(served[2][name][0]) as image:
                assert (body["width"], body["height"]) == image.size
    assert c.post("/api/v1/recognize", files=upload(next(iter(served[2].values()))[0]),
                  headers=auth(served)).status_code == 200
    assert batches[-1] == 1  # alone, it is computed alone at once


def test_a_photo_that_breaks_its_batch_fails_its_own_request_only(served, one_slot, monkeypatch):
    """A photo whose detection fails (here: memory runs out on a 'huge' one) in a batch: the batch is answered
    again one request at a time, so that photo's request alone answers 500 and the others their own names."""
    service, c, batches = one_slot
    detector = service.embedder.detector
    counted = detector.detect

    def detect(images):
        if any(image.size == (321, 123) for image in images):
            raise MemoryError("the huge photo")
        return counted(images)

    monkeypatch.setattr(detector, "detect", detect)
    huge = Image.new("RGB", (321, 123), (90, 90, 90))
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    photos = {name: (files[0].name, files[0].read_bytes()) for name, files in served[2].items()}
    photos["huge"] = ("huge.png", buffer.getvalue())
    answers = recognize_at_once(service, c, auth(served), photos)
    refused = answers.pop("huge")
    assert refused.status_code == 500 and error_of(refused)["status"] == "internal_error"
    assert {name: r.json()["faces"][0]["identity"] for name, r in answers.items()} == {n: n for n in answers}
    assert sorted(batches) == [1] * len(answers)  # the batch failed before the detector counted it; then alone


def test_concurrent_detections_are_one_batch_and_each_gets_its_own_faces(served, one_slot, tmp_path):
    """/detect requests waiting for the compute slot are detected together (one detector call), through the
    batcher /recognize uses, and each answer is its own photo's: the same as asked alone."""
    service, c, batches = one_slot
    photos = {name: (files[0].name, files[0].read_bytes()) for name, files in served[2].items()}
    grey = tmp_path / "grey.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(grey)
    photos["nobody"] = ("grey.png", grey.read_bytes())
    answers = recognize_at_once(service, c, auth(served), photos, "/api/v1/detect", service._finding)
    assert batches == [len(photos)]
    for name, (filename, data) in photos.items():
        alone = c.post("/api/v1/detect", files={"photo": (filename, data, "image/jpeg")}, headers=auth(served))
        assert answers[name].status_code == 200 and answers[name].json() == alone.json(), answers[name].text
        assert len(alone.json()["faces"]) == (0 if name == "nobody" else 1)
    assert batches[1:] == [1] * len(photos)  # alone, each is computed alone


def test_concurrent_verifications_are_one_batch_and_each_gets_its_own_verdict(served, one_slot):
    """/verify requests waiting for the compute slot have their photos detected and embedded together (one
    detector call for the four photos of two requests of two photos and two of one against a subject)."""
    service, c, batches = one_slot
    (a, a_files), (b, b_files) = list(served[2].items())[:2]
    photo = lambda f: (f.name, f.read_bytes())  # noqa: E731
    pairs = {"same": {"photo": photo(a_files[0]), "photo2": photo(a_files[1])},
             "other": {"photo": photo(a_files[0]), "photo2": photo(b_files[0])}}
    answers = recognize_at_once(service, c, auth(served), pairs, "/api/v1/verify", service._finding)
    subject = {"mine": photo(a_files[1]), "not": photo(b_files[1])}
    against = recognize_at_once(service, c, auth(served), subject, "/api/v1/verify", service._finding, {"subject": a})
    assert batches == [4, 2]
    for asked, request, data in [(answers, pairs, None), (against, subject, {"subject": a})]:
        for name, files in request.items():
            files = {"photo": files} if isinstance(files, tuple) else files
            alone = c.post("/api/v1/verify", files={k: (*v, "image/jpeg") for k, v in files.items()}, data=data,
                           headers=auth(served))
            assert asked[name].status_code == 200, asked[name].text
            batched, alone = asked[name].json(), alone.json()
            # a forward pass over 4 crops rounds a little differently from one over 2
            assert batched.pop("similarity") == pytest.approx(alone.pop("similarity"), abs=1e-5) and batched == alone
            assert [f["photo"] for f in alone["faces"]] == [v[0] for v in files.values()]
    assert answers["same"].json()["similarity"] > answers["other"].json()["similarity"]
    assert against["mine"].json()["similarity"] > against["not"].json()["similarity"]


def test_closing_stops_a_clustering_started_from_the_page(served, tmp_path, monkeypatch):
    """close() while a clustering started from the clusters page runs: it stops it at its next photo and waits for
    it (the folder stays as it was, the gallery read while still open), and no clustering starts after."""
    import facesearch.cluster
    from facesearch.cluster import ClusterError
    from facesearch.serve.service import Service

    root, checkpoint, photos, _ = served
    shutil.copytree(root / "gallery", tmp_path / "gallery")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for name, files in photos.items():
        for f in files[:2]:
            shutil.copy(f, unlabelled / f"{name}-{f.name}")
    clusters = tmp_path / "clusters"
    run_cli("cluster", unlabelled, "--out", clusters, "-c", checkpoint, "--eps", "0.25", "--min-size", "2")
    for name, files in photos.items():  # new photos: the run started from the page has faces to find
        shutil.copy(files[2], unlabelled / f"{name}-{files[2].name}")
    before = {p: p.read_bytes() for p in clusters.rglob("*") if p.is_file()}
    service = Service(tmp_path / "gallery", checkpoint=checkpoint, clusters=clusters)
    started, events, real = threading.Event(), [], facesearch.cluster.cluster_folder

    def cluster_folder(*args, progress, **kwargs):
        def looked_at(photos: int) -> None:
            started.set()
            while not service.clustering.stopping:  # photos are being looked at; the service is asked to close
                time.sleep(0.01)
            events.append("stopping seen")
            progress(photos)
        try:
            return real(*args, progress=looked_at, **kwargs)
        finally:
            events.append("clustering ended")

    gallery_close = service.gallery.close
    monkeypatch.setattr(facesearch.cluster, "cluster_folder", cluster_folder)
    monkeypatch.setattr(service.gallery, "close", lambda: events.append("gallery closed") or gallery_close())
    run = service.start_clustering()
    assert started.wait(60)
    service.close()
    assert events == ["stopping seen", "clustering ended", "gallery closed"]
    assert not run.running and "stopped when the service stopped" in run.error and run.message == ""
    assert {p: p.read_bytes() for p in clusters.rglob("*") if p.is_file()} == before
    with pytest.raises(ClusterError, match="stopping"):
        service.start_clustering()


def test_cli_keys_and_serve_refusals(served, tmp_path):
    root = served[0]
    gallery = tmp_path / "g"
    shutil.copytree(root / "gallery", gallery)
    made = run_cli("keys", "create", "ci", "--read-only", "-g", gallery, "--json")
    assert json.loads(made.stdout)["key"].startswith("fs_")
    listed = json.loads(run_cli("keys", "list", "-g", gallery, "--json").stdout)
    assert {"name": "ci", "read_only": True} in [{k: v for k, v in d.items() if k != "created_at"} for d in listed]
    again = run_cli("keys", "create", "ci", "-g", gallery, ok=False)
    assert again.exit_code == 1 and "exists already" in again.output
    blank = run_cli("keys", "create", " ", "-g", gallery, ok=False)
    assert blank.exit_code == 1 and "API key name ' ': empty" in blank.output
    run_cli("keys", "revoke", "ci", "-g", gallery)
    assert run_cli("keys", "revoke", "ci", "-g", gallery, ok=False).exit_code == 1
    public = run_cli("serve", "-g", gallery, "--host", "0.0.0.0", ok=False)
    assert public.exit_code == 1 and "--public" in public.output
    empty = tmp_path / "empty"
    run_cli("keys", "list", "-g", empty, ok=False)  # no gallery: refused, nothing created
    assert not empty.exists()
    for name in ("app", "viewer"):
        run_cli("keys", "revoke", name, "-g", gallery)
    nokeys = run_cli("serve", "-g", gallery, "-c", served[1], ok=False)
    assert nokeys.exit_code == 1 and "keys create" in nokeys.output


def test_a_read_only_gallery_refuses_changes_with_a_clear_answer(served, tmp_path, monkeypatch):
    """A gallery the server may not write (a read-only mount, another user's folder) is served for reading: a
    change answers 403 read_only_gallery before anything is written (it was HTTP 500 OSError), recognition works."""
    import os

    from facesearch.serve.app import create_app
    from facesearch.serve.service import Service

    root, checkpoint, photos, _ = served
    shutil.copytree(root / "gallery", tmp_path / "gallery")
    access = os.access  # the tests may run as root, who may write anywhere: the gallery says it may not
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK and str(tmp_path) in str(p)
                        else access(p, mode, **kw))
    service = Service(tmp_path / "gallery", checkpoint=checkpoint)
    assert service.gallery.read_only
    name, files = next(iter(photos.items()))
    with TestClient(create_app(service)) as c:
        refused = [c.post(f"/api/v1/subjects/{name}/faces", files=upload(files[5]), headers=auth(served)),
                   c.post("/api/v1/subjects", json={"name": "Ada"}, headers=auth(served)),
                   c.delete(f"/api/v1/subjects/{name}", headers=auth(served))]
        for r in refused:
            assert r.status_code == 403 and error_of(r)["status"] == "read_only_gallery", r.text
            assert "read-only" in error_of(r)["reason"]
        assert c.post("/api/v1/recognize", files=upload(files[0]), headers=auth(served)).status_code == 200
        page = c.get(f"/subjects/{name}", headers=auth(served))
        assert "the gallery is read-only" in page.text and "Delete this subject" not in page.text
    service.close()
    assert not (tmp_path / "gallery" / "uploads").exists()


def test_a_file_the_server_cannot_write_is_a_clear_503(client, served):
    name, files = next(iter(served[2].items()))
    (served_gallery(client) / "uploads").write_text("a file where the uploads folder goes")
    r = client.post(f"/api/v1/subjects/{name}/faces", files=upload(files[5]), headers=auth(served))
    assert r.status_code == 503 and error_of(r)["status"] == "storage_error", r.text
    assert str(served_gallery(client)) not in r.text


def test_face_ids_beyond_sql_integers_are_refused_not_crashed(client, served):
    for face_id in (2**63, 2**64, 10**30, 0, -1):
        for method, url in (("get", f"/api/v1/faces/{face_id}"), ("get", f"/api/v1/faces/{face_id}/crop"),
                            ("delete", f"/api/v1/faces/{face_id}")):
            r = getattr(client, method)(url, headers=auth(served))
            assert r.status_code == 422 and error_of(r)["status"] == "invalid_request", (url, r.text)
    assert client.get(f"/api/v1/faces/{2**63 - 1}", headers=auth(served)).status_code == 404


def test_any_subject_name_is_one_path_segment(client, served):
    """``x/faces`` is a subject (sent as x%2Ffaces), not the faces of ``x``; both can exist."""
    headers = auth(served)
    for name in ("x", "x/faces", "x/merge", "a%2Fb", "100% sure"):
        assert client.post("/api/v1/subjects", json={"name": name}, headers=headers).status_code == 201
    enc = lambda n: quote(n, safe="")  # noqa: E731
    for name in ("x", "x/faces", "x/merge", "a%2Fb", "100% sure"):
        got = client.get(f"/api/v1/subjects/{enc(name)}", headers=headers)
        assert got.status_code == 200 and got.json()["name"] == name, (name, got.text)
        assert client.get(f"/api/v1/subjects/{enc(name)}/faces", headers=headers).json()["subject"] == name
        assert client.get(f"/subjects/{enc(name)}", headers=headers).status_code == 200
    photo = next(iter(served[2].values()))[5]
    added = client.post(f"/api/v1/subjects/{enc('x/faces')}/faces", files=upload(photo), headers=headers)
    assert added.status_code == 201, added.text
    assert client.get("/api/v1/subjects/x", headers=headers).json()["faces"] == 0
    renamed = client.patch(f"/api/v1/subjects/{enc('x/faces')}", json={"name": "y/faces"}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["faces"] == 1
    merged = client.post(f"/api/v1/subjects/{enc('x/merge')}/merge", json={"into": "y/faces"}, headers=headers)
    assert merged.status_code == 200
    assert client.delete(f"/api/v1/subjects/{enc('y/faces')}", headers=headers).json()["removed_faces"] == 1
    assert client.get("/api/v1/subjects/x", headers=headers).status_code == 200  # x untouched throughout


def test_serve_on_a_busy_port_says_so_before_printing_a_url(served, tmp_path):
    root, checkpoint, _, _ = served
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("serve", "-g", root / "gallery", "-c", checkpoint, "--port", port, ok=False)
    assert result.exit_code == 1, result.output
    assert f"port {port} on 127.0.0.1 is in use" in result.output and "http://" not in result.output
