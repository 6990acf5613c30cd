"""The API's CompreFace-style endpoints and parameters (issue 29): detection threshold and face limit on
recognize, detect, verify, enrolment from a group photo, the paged face list, deleting a subject's faces; each
refusal (no key, read-only key, bad photo, no face, several faces, bad parameters); the OpenAPI document's key
scheme, request bodies and answers; and Swagger UI at /api/docs, offline, in the real Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

from test_serve import PEOPLE, auth, client, error_of, served, upload  # noqa: E402,F401  (fixtures and helpers)

SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
NEW_PATHS = {"/api/v1/detect": "post", "/api/v1/verify": "post", "/api/v1/faces": "get"}


@pytest.fixture(scope="module")
def photos(served, tmp_path_factory):
    """A group photo (the first person large, the second at half size beside), a photo with no face, a text file,
    and a second photo of the first person (the enrolled one, 90 % the size)."""
    root = tmp_path_factory.mktemp("api-photos")
    (first, a_files), (second, b_files) = list(served[2].items())[:2]
    with Image.open(a_files[0]) as a, Image.open(b_files[0]) as b:
        a, b = a.convert("RGB"), b.convert("RGB").resize((b.width // 2, b.height // 2))
        group = Image.new("RGB", (a.width + b.width + 40, a.height), (128, 128, 128))
        group.paste(a, (0, 0))
        group.paste(b, (a.width + 40, 0))
        group.save(root / "group.jpg", quality=95)
        group.resize((group.width * 3, group.height * 3)).save(root / "big.jpg", quality=95)
        a.resize((a.width * 9 // 10, a.height * 9 // 10)).save(root / "again.jpg")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(root / "blank.png")
    (root / "notes.jpg").write_text("not a photo")
    return {"group": root / "group.jpg", "blank": root / "blank.png", "text": root / "notes.jpg",
            "again": root / "again.jpg", "big": root / "big.jpg", "first": first, "second": second, "other": b_files[0]}


def area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def refused(r, code: int, status: str, *words: str) -> None:
    assert r.status_code == code, r.text
    assert error_of(r)["status"] == status and all(w in error_of(r)["reason"] for w in words), r.text
    assert "Traceback" not in r.text


# -- recognize: det_prob_threshold, limit ---------------------------------------------------------------


def test_recognize_lists_the_sure_faces_and_the_largest_first(client, served, photos):
    every = client.post("/api/v1/recognize", files=upload(photos["group"]), headers=auth(served, "read")).json()
    faces = every["faces"]
    assert len(faces) >= 2
    one = client.post("/api/v1/recognize?limit=1", files=upload(photos["group"]), headers=auth(served)).json()
    assert [f["box"] for f in one["faces"]] == [max((f["box"] for f in faces), key=area)]
    assert one["faces"][0]["identity"] == photos["first"]  # the large face is the first person's
    two = client.post("/api/v1/recognize?limit=2", files=upload(photos["group"]), headers=auth(served)).json()
    assert [area(f["box"]) for f in two["faces"]] == sorted((area(f["box"]) for f in faces), reverse=True)[:2]
    for cut in sorted({f["det_prob"] for f in faces}):
        r = client.post(f"/api/v1/recognize?det_prob_threshold={cut}", files=upload(photos["group"]),
                        headers=auth(served)).json()
        assert [f["box"] for f in r["faces"]] == [f["box"] for f in faces if f["det_prob"] >= cut]
    assert {"threshold", "threshold_source", "timings_ms", "width"} <= set(one)  # the answer's fields stay


@pytest.mark.parametrize("query, param", [
    ("det_prob_threshold=-0.1", "det_prob_threshold"), ("det_prob_threshold=1.5", "det_prob_threshold"),
    ("det_prob_threshold=nan", "det_prob_threshold"), ("limit=0", "limit"), ("limit=-3", "limit"),
    ("limit=many", "limit"), ("threshold=nan", "threshold"), ("threshold=-2", "threshold"), ("top_k=0", "top_k")])
def test_recognize_and_detect_refuse_bad_parameters(client, served, photos, query, param):
    for endpoint in ("recognize", "detect"):
        if endpoint == "detect" and param in ("threshold", "top_k"):
            continue
        r = client.post(f"/api/v1/{endpoint}?{query}", files=upload(photos["group"]), headers=auth(served))
        refused(r, 422, "invalid_request", param)


# -- detect --------------------------------------------------------------------------------------------


def test_detect_answers_boxes_landmarks_and_scores_without_searching(client, served, photos):
    r = client.post("/api/v1/detect", files=upload(photos["group"]), headers=auth(served, "read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["photo"] == "group.jpg" and body["width"] > body["height"] > 0
    recognized = client.post("/api/v1/recognize", files=upload(photos["group"]), headers=auth(served)).json()
    assert [f["box"] for f in body["faces"]] == [f["box"] for f in recognized["faces"]]  # the same faces
    for face in body["faces"]:
        assert set(face) == {"box", "landmarks", "det_prob"} and 0 < face["det_prob"] <= 1
        assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
        x1, y1, x2, y2 = face["box"]
        assert all(x1 - 5 <= x <= x2 + 5 and y1 - 5 <= y <= y2 + 5 for x, y in face["landmarks"])
    largest = client.post("/api/v1/detect?limit=1", files=upload(photos["group"]), headers=auth(served)).json()
    assert [f["box"] for f in largest["faces"]] == [max((f["box"] for f in body["faces"]), key=area)]
    assert photos["big"].stat().st_size > 64 * 1024  # an upload, not a small body (the 64 KiB of other requests)
    big = client.post("/api/v1/detect", files=upload(photos["big"]), headers=auth(served))
    assert big.status_code == 200 and len(big.json()["faces"]) == len(body["faces"]), big.text
    blank = client.post("/api/v1/detect", files=upload(photos["blank"]), headers=auth(served)).json()
    assert blank["faces"] == []
    refused(client.post("/api/v1/detect", files=upload(photos["group"])), 401, "unauthorized", "X-API-Key")
    refused(client.post("/api/v1/detect", files=upload(photos["text"]), headers=auth(served)), 422, "not_an_image",
            "notes.jpg")


# -- verify --------------------------------------------------------------------------------------------


def test_verify_two_photos_and_a_photo_against_a_subject(client, served, photos):
    from facesearch.gallery import DEFAULT_THRESHOLD

    first, enrolled = photos["first"], served[2][photos["first"]][0]
    same = client.post("/api/v1/verify", files={**upload(enrolled), "photo2": ("again.jpg",
                       photos["again"].read_bytes(), "image/jpeg")}, headers=auth(served, "read"))
    assert same.status_code == 200, same.text
    body = same.json()
    assert body["same"] is True and body["similarity"] > 0.9
    assert (body["threshold"], body["threshold_source"]) == (DEFAULT_THRESHOLD, "default")
    assert [f["photo"] for f in body["faces"]] == [enrolled.name, "again.jpg"]
    import base64

    as_json = client.post("/api/v1/verify", headers=auth(served), json={
        "image_base64": base64.b64encode(enrolled.read_bytes()).decode(), "filename": "a.jpg",
        "image2_base64": base64.b64encode(photos["again"].read_bytes()).decode(), "filename2": "b.jpg"})
    assert as_json.status_code == 200 and as_json.json()["similarity"] == body["similarity"], as_json.text
    assert [f["photo"] for f in as_json.json()["faces"]] == ["a.jpg", "b.jpg"]
    strict = client.post("/api/v1/verify?threshold=1", files={**upload(enrolled), "photo2": (
        "again.jpg", photos["again"].read_bytes(), "image/jpeg")}, headers=auth(served)).json()
    assert strict["same"] is False and strict["threshold_source"] == "given"
    subject = client.post("/api/v1/verify", files=upload(enrolled), data={"subject": first}, headers=auth(served))
    assert subject.status_code == 200, subject.text
    answer = subject.json()
    assert answer["subject"] == first and answer["similarity"] == pytest.approx(1, abs=1e-4) and answer["same"]
    assert answer["face_id"] in [f["id"] for f in client.get(f"/api/v1/subjects/{first}", headers=auth(served))
                                 .json()["face_list"]]
    big = client.post("/api/v1/verify", files={**upload(photos["big"]), "photo2": ("big2.jpg", photos["big"].read_bytes())},
                      headers=auth(served))  # two photos each over 64 KiB
    assert big.status_code == 200 and big.json()["same"], big.text
    group = client.post("/api/v1/verify", files=upload(photos["group"]), data={"subject": first}, headers=auth(served))
    assert group.json()["faces"][0]["faces_in_photo"] >= 2 and group.json()["same"]  # the largest face: first's
    other = client.post("/api/v1/verify", files=upload(photos["other"]), data={"subject": first},
                        headers=auth(served)).json()
    assert other["similarity"] < answer["similarity"]  # another person (the tiny random model: barely lower)
    between = (other["similarity"] + answer["similarity"]) / 2
    stricter = client.post(f"/api/v1/verify?threshold={between}", files=upload(photos["other"]),
                           data={"subject": first}, headers=auth(served)).json()
    assert stricter["same"] is False and stricter["threshold"] == between


def test_verify_refusals(client, served, photos):
    enrolled, first = served[2][photos["first"]][0], photos["first"]
    two = {**upload(enrolled), "photo2": ("blank.png", photos["blank"].read_bytes(), "image/png")}
    refused(client.post("/api/v1/verify", files=upload(enrolled)), 401, "unauthorized")
    refused(client.post("/api/v1/verify", files=upload(enrolled), headers=auth(served)), 422, "invalid_request",
            "photo2", "subject")
    refused(client.post("/api/v1/verify", files={**upload(enrolled), "photo2": ("x.jpg", enrolled.read_bytes())},
                        data={"subject": first}, headers=auth(served)), 422, "invalid_request", "not both")
    refused(client.post("/api/v1/verify", files=two, headers=auth(served)), 422, "no_face", "blank.png",
            "no face detected")
    refused(client.post("/api/v1/verify", files=upload(photos["text"]), data={"subject": first}, headers=auth(served)),
            422, "not_an_image", "notes.jpg")
    refused(client.post("/api/v1/verify", files=upload(enrolled), data={"subject": "nobody"}, headers=auth(served)),
            404, "not_found", "nobody")
    refused(client.post("/api/v1/verify?threshold=nan", files=upload(enrolled), data={"subject": first},
                        headers=auth(served)), 422, "invalid_request", "threshold")
    client.post("/api/v1/subjects", json={"name": "empty"}, headers=auth(served))
    refused(client.post("/api/v1/verify", files=upload(enrolled), data={"subject": "empty"}, headers=auth(served)),
            422, "no_face", "'empty' has no enrolled face")


def test_verify_scores_a_subject_by_the_exact_cosine_to_each_of_its_faces(client, served, photos, monkeypatch):
    """Against a subject, the photo's face is compared with each of the subject's own stored embeddings: no search
    of the vector store (an approximate index's top k may leave the subject's faces out; a search for every face
    costs the gallery's size), and the answer is the best face's exact cosine."""
    import numpy as np
    import sqlalchemy as sa

    from facesearch.gallery.models import Face, Identity

    service, first = client.app.state.service, photos["first"]

    def search(*args, **kwargs):
        raise AssertionError("verify searched the vector store")

    monkeypatch.setattr(service.gallery, "search", search)
    r = client.post("/api/v1/verify", files=upload(photos["other"]), data={"subject": first}, headers=auth(served))
    assert r.status_code == 200, r.text
    query = next(service.embedder.faces_of([photos["other"]], select="largest")).faces[0].embedding
    with service.gallery.engine.connect() as conn:
        rows = conn.execute(sa.select(Face.id, Face.embedding).join(Identity).where(Identity.name == first)).all()
    cosines = {face_id: float(np.frombuffer(blob, np.float32) @ query) for face_id, blob in rows}
    best = max(cosines, key=cosines.get)
    assert len(cosines) == 2 and r.json()["face_id"] == best
    assert r.json()["similarity"] == pytest.approx(cosines[best], abs=2e-6)


def test_the_threshold_answers_say_where_it_came_from(client, served, photos):
    """recognize, verify and the gallery's stats tell the threshold's source as it is: the default; one set by hand
    on the gallery page ("manual", not "calibrated"); one an earlier facesearch stored without recording how
    ("stored"; its gallery page's hand-set ones did record it: "manual"); one given with the request."""
    import sqlalchemy as sa

    from facesearch.gallery.models import GalleryState

    enrolled, first = served[2][photos["first"]][0], photos["first"]

    def answered(query: str = "") -> list[tuple]:
        rec = client.post(f"/api/v1/recognize{query}", files=upload(enrolled), headers=auth(served)).json()
        ver = client.post(f"/api/v1/verify{query}", files=upload(enrolled), data={"subject": first},
                          headers=auth(served)).json()
        stats = client.get("/api/v1/gallery", headers=auth(served)).json()
        return [(rec["threshold"], rec["threshold_source"], rec["threshold_calibrated"]),
                (ver["threshold"], ver["threshold_source"]),
                (stats["threshold"], stats["threshold_source"], stats["threshold_calibrated"])]

    def stored(value: float, meta: dict) -> None:  # as an earlier facesearch left it
        with client.app.state.service.gallery.engine.begin() as conn:
            conn.execute(sa.update(GalleryState).values(threshold=value, threshold_meta=meta))

    assert answered() == [(0.5, "default", False), (0.5, "default"), (0.5, "default", False)]
    by_hand = client.post("/gallery/threshold", data={"threshold": "0.25"}, headers=auth(served),
                          follow_redirects=False)
    assert by_hand.status_code == 303, by_hand.text
    assert answered() == [(0.25, "manual", False), (0.25, "manual"), (0.25, "manual", False)]
    assert answered("?threshold=0.2")[:2] == [(0.2, "given", False), (0.2, "given")]
    stored(0.3, {"fpir": 0.01, "rule": "fpir"})
    assert answered() == [(0.3, "stored", False), (0.3, "stored"), (0.3, "stored", False)]
    page = client.get("/gallery", headers=auth(served)).text
    assert "stored by an earlier facesearch" in page and "calibrated with" not in page
    stored(0.35, {"method": "set on the gallery page", "by": "app", "date": "2026-12-01T10:00:00+00:00"})
    assert answered()[0] == (0.35, "manual", False)
    assert "set on the gallery page by key app, 2026-12-01" in client.get("/gallery", headers=auth(served)).text


# -- enrolment from a group photo ----------------------------------------------------------------------


def test_a_group_photo_is_enrolled_with_largest_true_and_refused_without(client, served, photos):
    url = f"/api/v1/subjects/{photos['first']}/faces"
    plain = client.post(url, files=upload(photos["group"]), headers=auth(served))
    refused(plain, 422, "several_faces", "group.jpg", "largest=true")
    assert "--" not in error_of(plain)["reason"] and "several_faces" not in error_of(plain)["reason"]
    assert plain.json()["faces_in_photo"] >= 2
    refused(client.post(url + "?largest=true", files=upload(photos["group"]), headers=auth(served, "read")), 403,
            "forbidden", "read-only")
    refused(client.post(url + "?largest=maybe", files=upload(photos["group"]), headers=auth(served)), 422,
            "invalid_request", "largest")
    done = client.post(url + "?largest=true", files=upload(photos["group"]), headers=auth(served))
    assert done.status_code == 201, done.text
    face = client.get(f"/api/v1/faces/{done.json()['face_id']}", headers=auth(served)).json()
    every = client.post("/api/v1/detect", files=upload(photos["group"]), headers=auth(served)).json()["faces"]
    assert face["box"] == pytest.approx(max((f["box"] for f in every), key=area), abs=0.06)  # stored unrounded
    assert face["subject"] == photos["first"]
    faceless = client.post(url, files=upload(photos["blank"]), headers=auth(served))
    refused(faceless, 422, "no_face", "blank.png: no face detected")
    assert "no_face" not in error_of(faceless)["reason"]


def test_a_merge_into_nobody_names_the_api_field_not_the_cli_flag(client, served):
    name = sorted(served[2])[0]
    r = client.post(f"/api/v1/subjects/{name}/merge", json={"into": "Newcomer"}, headers=auth(served))
    refused(r, 404, "not_found", "'Newcomer'", '"create": true')
    assert "--" not in error_of(r)["reason"]
    refused(client.post("/api/v1/subjects/nobody/merge", json={"into": name}, headers=auth(served)), 404, "not_found",
            "nobody")
    done = client.post(f"/api/v1/subjects/{name}/merge", json={"into": "Newcomer", "create": True}, headers=auth(served))
    assert done.status_code == 200 and done.json()["moved_faces"] == 2


# -- the face list, deleting a subject's faces ----------------------------------------------------------


def test_faces_are_listed_a_page_at_a_time(client, served):
    everyone = client.get("/api/v1/faces?limit=1000", headers=auth(served, "read")).json()
    assert everyone["total"] == 2 * PEOPLE and len(everyone["faces"]) == 2 * PEOPLE
    ids = [f["id"] for f in everyone["faces"]]
    assert ids == sorted(ids) and {f["subject"] for f in everyone["faces"]} == set(served[2])
    page = client.get("/api/v1/faces?offset=2&limit=3", headers=auth(served)).json()
    assert (page["total"], page["offset"], page["limit"]) == (2 * PEOPLE, 2, 3)
    assert [f["id"] for f in page["faces"]] == ids[2:5] and page["faces"][0]["crop_url"].endswith("/crop")
    assert client.get("/api/v1/faces?offset=100", headers=auth(served)).json()["faces"] == []
    for query, param in (("limit=0", "limit"), ("offset=-1", "offset"), ("limit=5000", "limit")):
        refused(client.get(f"/api/v1/faces?{query}", headers=auth(served)), 422, "invalid_request", param)
    refused(client.get("/api/v1/faces"), 401, "unauthorized")


def test_the_face_and_subject_lists_are_paged_in_sql(client, served):
    """A page of faces (of subjects) loads that page's rows only, and counts the rest with a COUNT query: the
    database's rows loaded (the ORM's load events) and the statements sent are counted."""
    import sqlalchemy as sa

    from facesearch.gallery.models import Face, Identity

    loaded, statements = [], []
    record = lambda target, context: loaded.append(type(target).__name__)  # noqa: E731
    sent = lambda conn, cursor, statement, *rest: statements.append(" ".join(statement.split()))  # noqa: E731
    engine = client.app.state.service.gallery.engine
    for cls in (Face, Identity):
        sa.event.listen(cls, "load", record)
    sa.event.listen(engine, "before_cursor_execute", sent)
    try:
        faces = client.get("/api/v1/faces?offset=2&limit=3", headers=auth(served)).json()
        faces_loaded, faces_sent = loaded.count("Face"), list(statements)
        loaded.clear()
        statements.clear()
        subjects = client.get("/api/v1/subjects?offset=1&limit=1", headers=auth(served)).json()
    finally:
        for cls in (Face, Identity):
            sa.event.remove(cls, "load", record)
        sa.event.remove(engine, "before_cursor_execute", sent)
    assert (faces["total"], len(faces["faces"]), faces_loaded) == (2 * PEOPLE, 3, 3)
    assert any("count(" in q.lower() for q in faces_sent)
    assert any("LIMIT" in q and "FROM faces" in q for q in faces_sent)
    assert (subjects["total"], len(subjects["subjects"]), loaded.count("Identity")) == (PEOPLE, 1, 1)
    assert subjects["subjects"][0]["name"] == sorted(served[2])[1]


def test_deleting_a_subjects_faces_keeps_the_subject(client, served):
    name = sorted(served[2])[0]
    refused(client.delete(f"/api/v1/subjects/{name}/faces"), 401, "unauthorized")
    refused(client.delete(f"/api/v1/subjects/{name}/faces", headers=auth(served, "read")), 403, "forbidden")
    refused(client.delete("/api/v1/subjects/nobody/faces", headers=auth(served)), 404, "not_found", "nobody")
    r = client.delete(f"/api/v1/subjects/{name}/faces", headers=auth(served))
    assert r.status_code == 200 and r.json() == {"subject": name, "removed_faces": 2}
    kept = client.get(f"/api/v1/subjects/{name}", headers=auth(served)).json()
    assert kept["faces"] == 0 and kept["face_list"] == []
    assert client.get("/api/v1/faces", headers=auth(served)).json()["total"] == 2 * PEOPLE - 2
    assert client.get("/api/v1/gallery/check", headers=auth(served)).json()["ok"] is True
    again = client.delete(f"/api/v1/subjects/{name}/faces", headers=auth(served))
    assert again.json() == {"subject": name, "removed_faces": 0}


# -- the OpenAPI document and Swagger UI ----------------------------------------------------------------


def test_openapi_declares_the_key_scheme_the_upload_bodies_and_the_answers(client):
    spec = client.get("/api/v1/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["APIKey"] == {**schemes["APIKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method in NEW_PATHS.items():
        assert method in spec["paths"][path], path
    uploads = [("/api/v1/recognize", "post"), ("/api/v1/detect", "post"), ("/api/v1/verify", "post"),
               ("/api/v1/explain", "post"), ("/api/v1/subjects/{name}/faces", "post")]
    for path, method in uploads:
        op = spec["paths"][path][method]
        assert {"APIKey": []} in op["security"], path
        form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["photo"]["format"] == "binary" and form["required"] == ["photo"], path
        assert "image_base64" in op["requestBody"]["content"]["application/json"]["schema"]["properties"], path
        assert "$ref" in op["responses"]["200" if method != "post" or "faces" not in path else "201"]["content"][
            "application/json"]["schema"], path
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorAnswer")
    verify = spec["paths"]["/api/v1/verify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"photo2", "subject"} <= set(verify["properties"])
    params = {p["name"] for p in spec["paths"]["/api/v1/recognize"]["post"]["parameters"]}
    assert {"top_k", "threshold", "det_prob_threshold", "limit"} <= params
    largest = spec["paths"]["/api/v1/subjects/{name}/faces"]["post"]["parameters"]
    assert "largest" in {p["name"] for p in largest}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "schema" in op["responses"][next(c for c in op["responses"] if c.startswith("2"))].get(
                "content", {}).get("application/json", {"schema": 1}), (method, path)


def test_answers_keep_fields_their_models_do_not_name(client, served):
    stats = client.get("/api/v1/gallery", headers=auth(served)).json()
    assert {"identities", "faces", "threshold", "model_source", "threshold_calibrated"} <= set(stats)


def test_the_docs_page_loads_swagger_ui_from_this_server_only(client):
    import re

    page = client.get("/api/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts == ["/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-init.js"]
    assert "<script>" not in page.text and "cdn" not in page.text.lower()
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp
    for url in scripts:
        assert client.get(url).status_code == 200


@pytest.mark.browser
def test_swagger_ui_renders_offline_and_tries_an_endpoint_with_a_key(chromium, served, tmp_path):
    """Swagger UI at /api/docs in Chromium: every request goes to this server (nothing else is reachable: the
    browser is routed offline), no Content-Security-Policy violation, and "Try it out" lists the subjects
    with the key given to "Authorize", and uploads a photo to detect through the declared request body."""
    import shutil

    from builders import serving
    from facesearch.serve.app import create_app
    from facesearch.serve.service import Service

    root, checkpoint, people, keys = served
    photo = next(iter(people.values()))[0]
    shutil.copytree(root / "gallery", tmp_path / "gallery")
    service = Service(tmp_path / "gallery", checkpoint=checkpoint)
    with serving(create_app(service)) as base:
        context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
        foreign, problems = [], []
        context.route(lambda url: not url.startswith(base),
                      lambda route: (foreign.append(route.request.url), route.abort()))
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto("/api/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/api/v1/verify" in paths and "/api/v1/recognize" in paths
        page.click("button.authorize")
        page.fill(".modal-ux input[type=text], .modal-ux input[type=password]", keys["read"])
        page.click(".modal-ux button[type=submit]")
        page.click(".modal-ux button.close-modal")
        block = page.locator(".opblock-get", has=page.locator(".opblock-summary-path", has_text="/api/v1/subjects"))
        block = block.filter(has_not_text="{name}").first
        block.locator(".opblock-summary").click()
        block.locator("button.try-out__btn").click()
        block.locator("button.execute").click()
        status = block.locator(".live-responses-table tr.response .response-col_status").first
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip() == "200"
        assert sorted(served[2])[0] in block.locator(".live-responses-table .microlight").first.inner_text()
        detect = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/api/v1/detect"))
        detect.locator(".opblock-summary").click()
        detect.locator("button.try-out__btn").click()
        detect.locator("input[type=file]").first.set_input_files(str(photo))  # the declared multipart body
        detect.locator("button.execute").click()
        status = detect.locator(".live-responses-table tr.response .response-col_status").first
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip() == "200"
        assert "landmarks" in detect.locator(".live-responses-table .microlight").first.inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "api-docs.png"), full_page=True)  # a test artefact, not committed
        context.close()
    service.close()
    assert foreign == [] and not [p for p in problems if "Content Security Policy" in p or "Refused" in p], \
        (foreign, problems)


# -- calibrate -----------------------------------------------------------------------------------------


def zipped(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def calibration_zip(served, sample_photos) -> bytes:
    """4 unenrolled photos of each of the 3 enrolled people and 4 of each of 3 strangers, as calib/<person>/*.jpg."""
    people = sorted(p for p in sample_photos.iterdir() if p.is_dir())
    chosen = {p.name: sorted(p.glob("*.jpg"))[2:6] for p in people[:PEOPLE]}
    chosen.update({p.name: sorted(p.glob("*.jpg"))[:4] for p in people[PEOPLE:2 * PEOPLE]})
    return zipped({f"calib/{name}/{f.name}": f.read_bytes() for name, files in chosen.items() for f in files})


def test_calibrate_stores_the_threshold_recognize_and_verify_use(client, served, calibration_zip):
    files = {"photos": ("calib.zip", calibration_zip, "application/zip")}
    r = client.post("/api/v1/calibrate?balanced=true", files=files, headers=auth(served))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["rule"], body["n_mated"], body["n_nonmated"]) == ("balanced", 4 * PEOPLE, 4 * PEOPLE)
    assert -1 <= body["threshold"] <= 1 and body["threshold_source"] == "calibrated"
    stats = client.get("/api/v1/gallery", headers=auth(served)).json()
    assert (stats["threshold"], stats["threshold_source"]) == (body["threshold"], "calibrated")
    meta = client.app.state.service.gallery.threshold()[1]
    assert meta["data_dir"] == "uploaded archive calib.zip"  # not the server's scratch folder
    assert not list(client.app.state.service.scratch.glob("calibrate-*"))  # unpacked photos are gone


def test_calibrate_refusals(client, served, calibration_zip, photos):
    files = {"photos": ("calib.zip", calibration_zip, "application/zip")}
    refused(client.post("/api/v1/calibrate?balanced=true", files=files), 401, "unauthorized")
    refused(client.post("/api/v1/calibrate?balanced=true", files=files, headers=auth(served, "read")), 403,
            "forbidden", "read-only")
    refused(client.post("/api/v1/calibrate", files=files, headers=auth(served)), 422, "cannot_calibrate",
            "12 photos of people not in the gallery", "at least 100")  # a 1 % target needs 100 strangers
    for query in ("fpir=0", "fpir=1", "fpir=nan", "fpir=-0.5", "balanced=maybe"):
        refused(client.post(f"/api/v1/calibrate?{query}", files=files, headers=auth(served)), 422,
                "invalid_request", query.split("=")[0])
    refused(client.post("/api/v1/calibrate?fpir=0.1&balanced=true", files=files, headers=auth(served)), 422,
            "invalid_request", "not both")
    refused(client.post("/api/v1/calibrate", files={"photos": ("c.zip", photos["text"].read_bytes())},
                        headers=auth(served)), 422, "not_an_archive", "c.zip")
    refused(client.post("/api/v1/calibrate", files={"photos": ("c.zip", zipped({"a/notes.txt": b"x"}))},
                        headers=auth(served)), 422, "no_photos", "c.zip")
    refused(client.post("/api/v1/calibrate", json={"images_base64": "eA=="}, headers=auth(served)), 415,
            "missing_photo", "photos")
    assert client.app.state.service.gallery.threshold()[1] is None  # nothing refused was stored


def test_an_archive_unpacks_inside_its_folder_only(tmp_path):
    from facesearch.serve.service import Limits, UploadError, unpack_photos

    archive = zipped({"../../escaped/a.jpg": b"1", "/abs.jpg": b"2", "top/bob/b.jpg": b"3", "bob/notes.txt": b"4",
                      "c:/x/c.jpg": b"5", "deep/er/still/ann/d.jpg": b"6"})
    assert unpack_photos(archive, "a.zip", tmp_path / "out", Limits()) == 4
    found = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert found == ["ann/d.jpg", "bob/b.jpg", "escaped/a.jpg", "x/c.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    bomb = zipped({"p/big.jpg": b"\0" * 5000})
    with pytest.raises(UploadError, match="more than the 1000 bytes"):
        unpack_photos(bomb, "bomb.zip", tmp_path / "bomb", Limits(max_bytes=1000))
