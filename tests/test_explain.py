"""explain_identification / explain_classification and their commands, end to end on a tiny checkpoint:
real MTCNN on the sample photos, a real SQLite + FAISS gallery, the written report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
SMALL = dict(seeds=2, candidates=3, faces_per_identity=2, maps_per_layer=4)


@pytest.fixture(scope="module")
def gallery(checkpoint, sample_photos, tmp_path_factory):
    """Three people, two photos each."""
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll

    people = sorted(p for p in sample_photos.iterdir() if p.is_dir())[:3]
    items = [(photo, person.name) for person in people for photo in sorted(person.glob("*.jpg"))[:2]]
    folder = tmp_path_factory.mktemp("gallery")
    with Gallery(folder) as g:
        outcomes = enroll(g, Embedder(checkpoint, device="cpu"), items, largest=True)
    assert all(o.status == "enrolled" for o in outcomes)
    return folder, items


def settings():
    from facesearch.explain import ExplainSettings

    return ExplainSettings(**SMALL)


def explain(photo, folder, checkpoint, out, **kwargs):
    """``explain_identification`` as the command calls it: the gallery opened, the query embedder built."""
    from facesearch.embed import Embedder
    from facesearch.explain import explain_identification
    from facesearch.gallery import Gallery

    with Gallery(folder, create=False) as g:
        return explain_identification(photo, g, Embedder.for_queries(checkpoint, "cpu"), out, **kwargs)


@pytest.fixture(scope="module")
def explained(checkpoint, gallery, tmp_path_factory):
    folder, items = gallery
    return explain(items[0][0], folder, checkpoint, tmp_path_factory.mktemp("out"), settings=settings())


def test_an_enrolled_photo_is_explained_with_its_own_identity(explained, gallery):
    e, name = explained, gallery[1][0][1]
    assert e.answer == name and e.runner_up != name
    assert e.margin > 0 and e.score == pytest.approx(1.0, abs=1e-4)  # its own face is the closest
    assert e.details["gallery_similarity"][name] == pytest.approx(1.0, abs=1e-3)  # its own enrolled face
    assert [l.name for l in e.layers] == CONVS + ["fc6", "fc7"]
    assert all(l.similarity is not None and len(l.similarity) == 3 for l in e.layers)
    assert sorted(e.ranking) == sorted(l.name for l in e.layers)
    for key in ("layer_maps", "ablation", "similarity", "pair", "feature_maps", "report", "json"):
        assert e.files[key].is_file() and e.files[key].stat().st_size > 0, key
    assert json.loads(e.files["json"].read_text())["answer"] == name


def test_the_report_is_one_self_contained_file(explained):
    e = explained
    html = e.files["report"].read_text()
    sources = re.findall(r"src='([^']*)'", html)
    assert len(sources) >= 3 + 5  # query, match, runner-up + the five figures
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "conv5_3" in html and e.answer in html and e.runner_up in html


def test_against_names_the_identity_to_explain(checkpoint, gallery, tmp_path):
    from facesearch.explain import ExplainError

    folder, items = gallery
    other = items[-1][1]
    e = explain(items[0][0], folder, checkpoint, tmp_path, against=other, settings=settings())
    assert e.answer == other and e.runner_up == items[0][1]  # the true match is now the runner-up
    assert e.margin < 0  # the named identity loses to the true one
    with pytest.raises(Exception, match="nobody"):
        explain(items[0][0], folder, checkpoint, tmp_path, against="nobody", settings=settings())
    with pytest.raises(ExplainError, match="no face"):
        blank = tmp_path / "wall.jpg"
        Image.new("RGB", (120, 120), (200, 190, 180)).save(blank)
        explain(blank, folder, checkpoint, tmp_path, settings=settings())


def test_a_one_person_gallery_is_explained_against_its_threshold(checkpoint, gallery, tmp_path):
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery
    from facesearch.gallery.enroll import enroll

    _, items = gallery
    name = items[0][1]
    with Gallery(tmp_path / "one") as g:
        enroll(g, Embedder(checkpoint, device="cpu"), [i for i in items if i[1] == name], largest=True)
        threshold = g.threshold()[0]
    e = explain(items[0][0], tmp_path / "one", checkpoint, tmp_path / "out", settings=settings())
    assert e.answer == name and e.runner_up == f"the threshold {threshold:.3f}"
    assert e.margin == pytest.approx(e.score - threshold, abs=1e-4)  # the decision: named at all, or unknown
    assert e.layers and all(l.similarity is None for l in e.layers)  # nothing to rank one person against
    assert sorted(e.ranking) == sorted(l.name for l in e.layers)
    assert "the threshold" in e.files["report"].read_text()


def test_classification_draws_13_rows_and_compares_reference_classes(checkpoint, tmp_path):
    from facesearch.explain import explain_classification

    rng = np.random.default_rng(0)
    image = tmp_path / "img.png"
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(image)
    refs = tmp_path / "refs"
    for name in ("a", "b", "c"):
        (refs / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(refs / name / f"{i}.png")
    e = explain_classification(image, checkpoint, tmp_path / "out", references=refs, settings=settings(), device="cpu")
    assert e.kind == "classification" and e.answer in "abc" and e.runner_up in "abc" and e.answer != e.runner_up
    probabilities = e.details["probabilities"]
    ranked = sorted(probabilities, key=probabilities.get, reverse=True)
    assert [e.answer, e.runner_up] == ranked[:2]  # the prediction and the class closest behind it
    # the logit margin is the log of the two probabilities' ratio
    assert e.margin == pytest.approx(np.log(probabilities[e.answer] / probabilities[e.runner_up]), abs=1e-3)
    assert [l.name for l in e.layers] == CONVS + ["fc6", "fc7", "fc8"]
    assert Image.open(e.files["feature_maps"]).size[1] > 13 * 64  # 13 rows of tiles
    assert "pair" not in e.files and "similarity" in e.files
    assert sum(e.details["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cli_explain_json_and_errors(checkpoint, gallery, tmp_path):
    from typer.testing import CliRunner

    from facesearch.cli import app

    folder, items = gallery
    runner = CliRunner()
    common = ["-c", str(checkpoint), "--out", str(tmp_path / "out"), "--seeds", "2", "--maps", "3", "--device", "cpu"]
    r = runner.invoke(app, ["explain", str(items[0][0]), "-g", str(folder), *common, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["answer"] == items[0][1] and len(data["layers"]) == 15
    r = runner.invoke(app, ["explain", str(tmp_path / "missing.jpg"), "-g", str(folder), *common])
    assert r.exit_code == 1 and "missing.jpg" in r.stderr
    r = runner.invoke(app, ["cifar10", "explain", str(items[0][0]), *common])
    assert r.exit_code == 0, r.output
    assert "report:" in r.stdout
