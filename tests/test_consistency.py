"""One way to build each thing: the approximate indexes agree with the exact one, `who` answers every face of a
group photo, and who / explain / evaluate / calibrate / the demo find the same faces in the same photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from builders import tiny_checkpoint

DIM = 32


def _clustered(rng, n_people: int, per_person: int) -> tuple[np.ndarray, list[str]]:
    centres = rng.normal(size=(n_people, DIM))
    x = np.repeat(centres, per_person, axis=0) + 0.35 * rng.normal(size=(n_people * per_person, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"p{i:03d}" for i in range(n_people) for _ in range(per_person)]


def test_hnsw_and_ivf_indexes_agree_with_the_exact_one_on_a_seeded_set(tmp_path):
    from facesearch.gallery import Gallery, IndexSettings, NewFace

    rng = np.random.default_rng(7)
    x, names = _clustered(rng, 60, 5)
    queries, _ = _clustered(np.random.default_rng(8), 60, 1)
    found = {}
    for kind, settings in (("flat", IndexSettings()),
                           ("hnsw", IndexSettings(kind="hnsw")),
                           ("ivf", IndexSettings(kind="ivf", min_train=100, ivf_nlist=8, ivf_nprobe=8))):
        with Gallery(tmp_path / kind) as g:
            g.add_faces([NewFace(n, v, source_sha256=f"{kind}-{i}") for i, (n, v) in enumerate(zip(names, x))], "fp")
            g.rebuild(settings)
            assert g.stats()["index_layout"].startswith(kind), g.stats()["index_layout"]
            found[kind] = g.search(queries, k=5)
    for kind in ("hnsw", "ivf"):
        for exact, approx in zip(found["flat"], found[kind]):
            assert approx[0].face_id == exact[0].face_id  # the same best face
            assert {h.face_id for h in approx} == {h.face_id for h in exact}
            # similarities are exact cosines either way (re-scored from the stored embeddings)
            assert [h.similarity for h in approx] == pytest.approx([h.similarity for h in exact], abs=1e-5)


@pytest.fixture(scope="module")
def group(sample_photos, tmp_path_factory):
    """Two people's photos side by side in one picture, each person enrolled from that same photo alone."""
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll

    root = tmp_path_factory.mktemp("group")
    checkpoint = tiny_checkpoint(root / "tiny.pt")
    people = sorted(p for p in sample_photos.iterdir() if p.is_dir())[:2]
    photos = [sorted(p.glob("*.jpg"))[0] for p in people]
    a, b = (Image.open(p).convert("RGB") for p in photos)
    picture = Image.new("RGB", (a.width + b.width + 40, max(a.height, b.height)), (128, 128, 128))
    picture.paste(a, (0, 0))
    picture.paste(b, (a.width + 40, 0))
    picture.save(root / "group.jpg", quality=95)
    with Gallery(root / "gallery") as g:
        outcomes = enroll(g, Embedder.for_queries(checkpoint, "cpu"), [(p, p.parent.name) for p in photos],
                          largest=True)
    assert [o.status for o in outcomes] == ["enrolled", "enrolled"]
    return root, checkpoint, [p.parent.name for p in photos]


def test_who_answers_every_face_of_a_group_photo(group):
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.search import who

    root, checkpoint, names = group
    with Gallery(root / "gallery", read_only=True) as g:
        result = who(g, Embedder.for_queries(checkpoint, "cpu"), root / "group.jpg", threshold=0.9)
    faces = sorted(result.faces, key=lambda f: f.box[0])  # left to right, as pasted
    assert len(faces) >= 2
    assert [faces[0].identity, faces[-1].identity] == names  # each face is its own person, not one answer for all


def test_who_explain_evaluate_calibrate_and_the_demo_find_the_same_faces(group):
    from facesearch.data.detect import DetectorSettings
    from facesearch.embed import Embedder
    from facesearch.evaluation.common import load_model, make_embedder
    from facesearch.explain.identification import _query_face
    from facesearch.gallery import Gallery
    from facesearch.search import who

    root, checkpoint, _ = group
    loaded = load_model(checkpoint, "cpu")
    with Gallery(root / "gallery", read_only=True) as g:
        boxes = [f.box for f in who(g, Embedder.for_queries(loaded, "cpu"), root / "group.jpg").faces]
    picture = Image.open(root / "group.jpg").convert("RGB")
    measured = make_embedder(loaded, "cpu")  # what evaluate and calibrate embed with (calibrate imports it)
    assert measured.detector.min_face_size == DetectorSettings().min_face_size == 40
    evaluated = [[round(float(v), 1) for v in f.face.box] for f in next(measured.faces_of([picture], "all")).faces]
    assert evaluated == boxes
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    explained = _query_face(root / "group.jpg", Embedder.for_queries(loaded, "cpu"), "group.jpg")  # the largest
    assert [round(float(v), 1) for v in explained.face.box] == largest
