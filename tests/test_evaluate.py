"""evaluate: pairs files, folds, the open-set split, figures on synthetic embeddings, photo sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.evaluation import common as evaluate, identification, verification
from facesearch.data.manifest import ManifestRow, write_manifest, write_settings

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "photos"
VIEW1_TEST = Path(__file__).resolve().parent / "data" / "lfw-pairsDevTest.txt"  # LFW View 1 test pairs, unchanged


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_pairs_without_header_both_line_kinds(tmp_path):
    path = _write(tmp_path, "pairs.txt", "Aaron_Peirsol\t1\t2\nAbdullah\t1\t3\n\nAJ_Cook\t1\tMarsha_Thomason\t1\n")
    parsed = verification.parse_pairs(path)
    assert parsed.n_folds is None
    assert [p.same for p in parsed.pairs] == [True, True, False]
    assert parsed.pairs[0].paths == ("Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg")
    assert parsed.pairs[2].paths == ("AJ_Cook/AJ_Cook_0001.jpg", "Marsha_Thomason/Marsha_Thomason_0001.jpg")


def test_parse_pairs_with_fold_header_and_count_header(tmp_path):
    lines = "a 1 2\nb 1 c 1\n" * 2  # 2 folds x (1 matched + 1 mismatched)
    assert verification.parse_pairs(_write(tmp_path, "v2.txt", "2\t1\n" + lines)).n_folds == 2
    view1 = verification.parse_pairs(_write(tmp_path, "v1.txt", "2\n" + lines))  # count-only header
    assert view1.n_folds is None and len(view1.pairs) == 4


def test_parse_pairs_reports_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"bad.txt, line 2"):
        verification.parse_pairs(_write(tmp_path, "bad.txt", "a 1 2\na one 2\n"))
    with pytest.raises(ValueError, match="promises 6 pairs, found 4"):
        verification.parse_pairs(_write(tmp_path, "hdr.txt", "3\n" + "a 1 2\nb 1 c 1\n" * 2))


def test_real_view1_file_parses_and_is_refused_as_a_10_fold_file():
    parsed = verification.parse_pairs(str(VIEW1_TEST))
    assert len(parsed.pairs) == 1000 and sum(p.same for p in parsed.pairs) == 500
    # View 1 lists all matched pairs first: consecutive folds would hold one kind only.
    with pytest.raises(ValueError, match="train file and a test file"):
        verification.pair_folds(parsed)


def test_pair_folds_are_the_files_consecutive_blocks(tmp_path):
    lines = "".join(f"p{i} 1 2\nq{i} 1 r{i} 1\n" for i in range(10))  # 10 folds of 2
    folds = verification.pair_folds(verification.parse_pairs(_write(tmp_path, "f.txt", "10 1\n" + lines)))
    assert [f.tolist() for f in folds[:3]] == [[0, 1], [2, 3], [4, 5]]


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_pair_scores_skip_pairs_with_a_missing_photo():
    pairs = [verification.Pair("a", 1, "a", 2, True), verification.Pair("a", 1, "b", 1, False), verification.Pair("c", 1, "c", 2, True)]
    emb = evaluate.Embedded(
        vectors={"a/a_0001.jpg": _unit([1, 0]), "a/a_0002.jpg": _unit([1, 1]), "b/b_0001.jpg": _unit([0, 1])}
    )
    scores, labels, kept = verification.pair_scores(emb, pairs)
    assert kept.tolist() == [0, 1]
    assert scores == pytest.approx([np.sqrt(0.5), 0.0])
    assert labels.tolist() == [True, False]


def test_train_test_threshold_comes_from_train_only():
    train = (np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False]))  # cut at 0.5
    test = (np.array([0.6, 0.45, 0.4, 0.3]), np.array([True, True, False, False]))  # own best cut ~0.425
    figures, threshold = verification.train_test_figures(train, test, n_boot=50)
    assert threshold == pytest.approx(0.5)
    assert figures["accuracy"] == 0.75 and figures["train_accuracy"] == 1.0
    low, high = figures["accuracy_ci95"]
    assert low <= 0.75 <= high


def test_verification_figures_say_not_measurable_with_few_impostors():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1, 0.3, 200), rng.normal(0, 0.3, 200)]
    labels = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    figures = verification.verification_figures(scores, labels, far_targets=(1e-2, 1e-3), n_boot=50)
    assert isinstance(figures["tar_at_far"]["0.01"], float)
    assert figures["tar_at_far"]["0.001"] == evaluate.NOT_MEASURABLE  # 200 impostors < 1000
    assert 0.95 < figures["auc"] <= 1.0
    assert figures["auc_ci95"][0] <= figures["auc"] <= figures["auc_ci95"][1]


def test_split_open_set_enrolls_k_and_keeps_singletons_as_distractors():
    photos = {"ann": ["a1", "a2", "a3"], "bob": ["b1"], "cy": ["c1", "c2"]}
    split = identification.split_open_set(photos, enroll_per_identity=1, seed=0)
    assert sorted(i for _, i in split.enrolled) == ["ann", "cy"]
    assert split.nonmated == [("b1", "bob")]
    assert sorted(k for k, _ in split.enrolled + split.mated) == ["a1", "a2", "a3", "c1", "c2"]
    assert split == identification.split_open_set(photos, enroll_per_identity=1, seed=0)  # reproducible
    two = identification.split_open_set(photos, enroll_per_identity=2, seed=0)
    assert {i for _, i in two.enrolled} == {"ann"} and {i for _, i in two.nonmated} == {"bob", "cy"}


def test_identification_figures_on_synthetic_embeddings():
    # 4 enrolled people on the axes of R^8; mated probes sit near their person, except one that sits
    # near someone else; 200 strangers are random directions in the other 4 dimensions, plus noise.
    rng = np.random.default_rng(0)
    eye = np.eye(8, dtype=np.float32)
    gallery, gallery_ids = eye[:4], ["p0", "p1", "p2", "p3"]
    mated = [eye[i] + 0.1 * eye[4] for i in range(4)] + [eye[1] + 0.05 * eye[5]]
    mated_ids = ["p0", "p1", "p2", "p3", "p0"]  # the last one is nearest p1: rank 2
    strangers = np.c_[0.2 * rng.random((200, 4)), rng.normal(size=(200, 4))]
    probes = np.array([_unit(v) for v in list(mated) + list(strangers)])
    figures, curve = identification.identification_figures(gallery, gallery_ids, probes, mated_ids + ["x"] * 200, n_boot=50)
    assert figures["n_mated_probes"] == 5 and figures["n_nonmated_probes"] == 200
    assert figures["rank1"] == pytest.approx(0.8) and figures["rank5"] == 1.0
    low, high = figures["rank1_ci95"]
    assert 0.0 <= low <= 0.8 <= high <= 1.0 and low < high
    assert figures["dir_at_fpir"]["0.01"] == pytest.approx(0.8)  # strangers score < 0.2, mated ~0.99
    assert curve.dir[-1] == pytest.approx(0.8)
    # every mated probe outscores every stranger: no equal error; the rank-2 probe is named, wrongly
    assert figures["detection_eer"] == 0.0 and figures["dir_at_detection_eer"] == pytest.approx(0.8)
    assert figures["detection_eer_ci95"] == (0.0, 0.0)


def test_identification_figures_without_strangers_are_not_measurable():
    eye = np.eye(3, dtype=np.float32)
    figures, _ = identification.identification_figures(eye[:2], ["a", "b"], eye[:2], ["a", "b"], n_boot=10)
    assert figures["rank1"] == 1.0
    assert figures["dir_at_fpir"]["0.1"] == evaluate.NOT_MEASURABLE
    assert figures["detection_eer"] == evaluate.NOT_MEASURABLE and figures["detection_eer_ci95"] is None


class ColourEmbedder:
    """Stands in for ``Embedder``: the embedding of a crop is its mean colour, normalised."""

    def embed_crops(self, crops):
        means = np.array([np.asarray(c.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) + 1 for c in crops])
        return means / np.linalg.norm(means, axis=1, keepdims=True)


def _row(path, status, crop=None, sha="", identity=None):
    return ManifestRow(path=path, identity=identity or path.split("/")[0], sha256=sha, size=1, mtime_ns=0, status=status, reason="", crop=crop)


def test_embed_photos_from_a_prepare_output(tmp_path):
    out, raw = tmp_path / "out", tmp_path / "raw"
    (out / "A").mkdir(parents=True)
    (raw / "A").mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(out / "A" / "h1.jpg")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(raw / "A" / "A_0003.jpg")
    rows = [
        _row("A/A_0001.jpg", "ok", crop="A/h1.jpg", sha="h1"),
        _row("A/A_0002.jpg", "duplicate", sha="h1"),  # same bytes as A_0001: shares its crop
        _row("A/A_0003.jpg", "no_face", sha="h3"),  # centre crop of the original
        _row("A/A_0004.jpg", "unreadable", sha="h4"),  # nothing to fall back on
    ]
    write_manifest(out, rows)
    write_settings(out, {"size": 16})
    wanted = [f"A/A_000{i}.jpg" for i in range(1, 6)]
    embedded = evaluate.embed_photos(ColourEmbedder(), wanted, out, raw_dir=raw)
    assert sorted(embedded.vectors) == wanted[:3]
    assert embedded.fallback == ["A/A_0003.jpg"]
    assert embedded.missing == ["A/A_0004.jpg", "A/A_0005.jpg"]
    assert np.argmax(embedded.vectors["A/A_0001.jpg"]) == 0  # red crop
    assert np.argmax(embedded.vectors["A/A_0003.jpg"]) == 2  # blue original
    without_raw = evaluate.embed_photos(ColourEmbedder(), wanted, out)
    assert "A/A_0003.jpg" in without_raw.missing


def test_list_photos_of_a_raw_folder_and_a_prepare_output(tmp_path):
    for rel in ["ann/1.jpg", "ann/2.png", "bob/1.jpg"]:
        (tmp_path / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "raw" / rel)
    (tmp_path / "raw" / "notes.txt").write_text("not a photo")
    assert evaluate.list_photos(tmp_path / "raw") == {"ann": ["ann/1.jpg", "ann/2.png"], "bob": ["bob/1.jpg"]}
    write_manifest(tmp_path / "out", [_row("ann/1.jpg", "ok", crop="ann/x.jpg"), _row("bob/1.jpg", "no_face")])
    assert evaluate.list_photos(tmp_path / "out") == {"ann": ["ann/1.jpg"]}


def test_list_photos_keeps_only_the_asked_splits_of_a_prepare_output(tmp_path):
    rows = [_row("ann/1.jpg", "ok", crop="ann/a.jpg"), _row("ann/2.jpg", "ok", crop="ann/b.jpg"),
            _row("cy/1.jpg", "ok", crop="cy/c.jpg")]
    rows[0].split, rows[1].split, rows[2].split = "train", "val", "holdout"
    write_manifest(tmp_path / "out", rows)
    assert evaluate.list_photos(tmp_path / "out", ["holdout"]) == {"cy": ["cy/1.jpg"]}
    assert evaluate.list_photos(tmp_path / "out", ["train", "val"]) == {"ann": ["ann/1.jpg", "ann/2.jpg"]}
    (tmp_path / "raw" / "ann").mkdir(parents=True)
    with pytest.raises(ValueError, match="prepare"):
        evaluate.list_photos(tmp_path / "raw", ["holdout"])


def test_results_file_appends_with_date(tmp_path):
    path = tmp_path / "results" / "evaluations.jsonl"
    evaluate.append_result(path, {"kind": "pairs", "fingerprint": "abc", "model": {"accuracy": 0.9}})
    evaluate.append_result(path, {"kind": "open-set", "fingerprint": "abc"})
    records = evaluate.read_results(path)
    assert [r["kind"] for r in records] == ["pairs", "open-set"]
    assert records[0]["date"][:2] == "20" and records[0]["model"]["accuracy"] == 0.9


def test_plots_are_written(tmp_path):
    from facesearch.evaluation import metrics, plots as evaluate_plots

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = {"model": np.r_[rng.normal(0.7, 0.1, 50), rng.normal(0.2, 0.1, 50)], "random_baseline": rng.random(100)}
    pairs = verification.PairsReport({}, labels, scores, {"model": 0.45, "random_baseline": 0.5})
    mated = rng.normal(size=(20, 5))
    curve = metrics.dir_fpir_curve(mated, mated.argmax(axis=1), rng.normal(size=(30, 5)))
    open_set = identification.OpenSetReport({"model": {"n_nonmated_probes": 30}}, {"model": curve})
    paths = evaluate_plots.save_pairs_plots(pairs, tmp_path) + evaluate_plots.save_open_set_plots(open_set, tmp_path)
    assert [p.name for p in paths] == ["roc.png", "similarity_histogram.png", "dir_fpir.png"]
    for p in paths:
        assert Image.open(p).size[0] > 300


def test_calibrate_choose_threshold_meets_the_target_fpir():
    from facesearch.evaluation.calibrate import choose_threshold

    strangers = np.arange(200) / 200.0  # best scores 0.000 .. 0.995
    mated_top = np.array([0.999, 0.99, 0.5, 0.999])
    mated_hit = np.array([True, True, True, False])  # the last one matched the wrong person
    cal = choose_threshold(mated_top, mated_hit, strangers, target_fpir=0.01)
    assert 0.985 < cal.threshold <= 0.99  # 2 of 200 strangers (0.99, 0.995) may pass
    assert cal.fpir == pytest.approx(0.01)
    assert cal.dir == pytest.approx(0.5)  # 0.999 and 0.99 right; 0.5 below; wrong match never counts
    assert (cal.n_mated, cal.n_nonmated) == (4, 200)
    with pytest.raises(ValueError, match="at least 1000 are needed"):
        choose_threshold(mated_top, mated_hit, strangers, target_fpir=0.001)


def test_calibrate_balanced_threshold_refuses_as_many_enrolled_as_it_names_strangers():
    from facesearch.evaluation.calibrate import choose_threshold

    rng = np.random.default_rng(0)
    mated_top, strangers = rng.normal(0.7, 0.1, 400), rng.normal(0.5, 0.1, 600)  # overlapping, as a weak model's
    mated_hit = rng.random(400) < 0.5
    cal = choose_threshold(mated_top, mated_hit, strangers, target_fpir=None)
    assert cal.rule == "balanced" and cal.to_dict()["rule"] == "balanced" and cal.target_fpir is None
    assert 0.55 < cal.threshold < 0.65  # midway between the two means
    assert abs(cal.fpir - (1 - cal.accepted)) < 0.01 and 0.75 < cal.accepted < 0.9
    assert cal.dir == pytest.approx(np.mean(mated_hit & (mated_top >= cal.threshold)))
    strict = choose_threshold(mated_top, mated_hit, strangers, target_fpir=0.01)
    assert strict.rule == "fpir" and strict.accepted < 0.5 < cal.accepted  # what the 1 % threshold costs
    with pytest.raises(ValueError, match="needs at least 10 of each"):
        choose_threshold(mated_top[:9], mated_hit[:9], strangers, target_fpir=None)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight VGG16 at 32 px with a 16-wide fc7, for 3 classes: fast to save, load and run."""
    import torch

    from facesearch.checkpoint import Preprocess, save_checkpoint
    from facesearch.models.vgg import VGG16, VGGConfig

    torch.manual_seed(123)  # not the baseline's seed 0: the "trained" weights must differ from it
    model = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16, embedding="pre_relu"))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, model, ["07201", "07203", "07206"], Preprocess(32))
    return path


def test_random_baseline_has_the_same_architecture_and_fixed_fresh_weights(tiny_checkpoint):
    loaded = evaluate.load_model(tiny_checkpoint, "cpu")
    a, b = evaluate.random_baseline(loaded, seed=0), evaluate.random_baseline(loaded, seed=0)
    assert a.config == loaded.config and a.class_names == loaded.class_names
    assert a.fingerprint == b.fingerprint != loaded.fingerprint
    assert evaluate.random_baseline(loaded, seed=1).fingerprint != a.fingerprint


def test_closed_set_scores_the_test_split(tiny_checkpoint, tmp_path):
    from facesearch.evaluation.closed_set import confused_pairs, evaluate_closed_set

    rows = []
    for identity, source in [("07201", "07201"), ("07203", "07203"), ("07206", "07206"), ("stranger", "07209")]:
        (tmp_path / identity).mkdir()
        for i, src in enumerate(sorted((SAMPLE / source).glob("*.jpg"))[:2]):
            Image.open(src).convert("RGB").resize((32, 32)).save(tmp_path / identity / f"{i}.jpg")
            row = _row(f"{identity}/{i}.jpg", "ok", crop=f"{identity}/{i}.jpg", identity=identity)
            row.split = "test"
            rows.append(row)
    write_manifest(tmp_path, rows)
    summary = evaluate_closed_set(tiny_checkpoint, data_dir=tmp_path, device="cpu")
    assert summary["n_images"] == 6 and summary["n_skipped_unknown_class"] == 2
    wrong = sum(c["count"] for c in summary["model"]["most_confused"])  # every error is one confused pair
    assert summary["model"]["accuracy"] == pytest.approx(1 - wrong / summary["n_images"])
    assert summary["random_baseline"]["fingerprint"] != summary["fingerprint"]
    labels, predicted = np.array([0, 0, 1, 2, 2]), np.array([1, 1, 1, 0, 2])
    assert confused_pairs(labels, predicted, ["a", "b", "c"]) == [
        {"true": "a", "predicted": "b", "count": 2},
        {"true": "c", "predicted": "a", "count": 1},
    ]


def test_calibrate_probe_outcomes_and_stored_threshold_with_a_real_gallery(tmp_path):
    from facesearch.evaluation.calibrate import choose_threshold, probe_outcomes
    from facesearch.gallery import Gallery, NewFace

    rng = np.random.default_rng(0)
    eye = np.eye(16, dtype=np.float32)
    with Gallery(tmp_path / "g") as gallery:
        gallery.add_faces([NewFace("ann", eye[0]), NewFace("bob", eye[1])], fingerprint="fp")
        mated = np.array([_unit(eye[0] + 0.1 * eye[5]), _unit(eye[1] + 0.1 * eye[6]), _unit(0.9 * eye[1] + eye[0])])
        strangers = np.array([_unit(np.r_[0.3 * rng.random(2), rng.normal(size=14)]) for _ in range(100)])
        top, hit, non_top = probe_outcomes(gallery, np.r_[mated, strangers].astype(np.float32), ["ann", "bob", "bob"] + ["zed"] * 100)
        assert hit.tolist() == [True, True, False]  # the third is nearer ann
        assert len(non_top) == 100 and top[0] == pytest.approx(np.float32(1 / np.sqrt(1.01)), abs=1e-5)
        cal = choose_threshold(top, hit, non_top, 0.01)
        gallery.set_threshold(cal.threshold, cal.to_dict())
        assert cal.dir == pytest.approx(2 / 3) and cal.fpir <= 0.01
    with Gallery(tmp_path / "g", create=False) as reopened:
        assert reopened.threshold() == (pytest.approx(cal.threshold), cal.to_dict())


@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory):
    """A prepare output in LFW's naming: 5 people x 4 photos (sample crops at 32 px) + 3 single-photo people."""
    out = tmp_path_factory.mktemp("lfw_prepared")
    people = sorted(p.name for p in SAMPLE.iterdir())[:8]
    rows = []
    for n, person in enumerate(people):
        for i, src in enumerate(sorted((SAMPLE / person).glob("*.jpg"))[: 4 if n < 5 else 1], start=1):
            rel = f"{person}/{person}_{i:04d}.jpg"
            (out / person).mkdir(exist_ok=True)
            Image.open(src).convert("RGB").resize((32, 32)).save(out / person / f"h{i}.jpg")
            rows.append(_row(rel, "ok", crop=f"{person}/h{i}.jpg", sha=f"{person}{i}"))
    write_manifest(out, rows)
    write_settings(out, {"size": 32})
    return out, people


def _pairs_text(people, n_folds):
    lines = []
    for f in range(n_folds):
        a, b = people[f % 5], people[(f + 1) % 5]
        lines += [f"{a}\t{1 + f % 3}\t4", f"{a}\t1\t{b}\t{1 + f % 4}"]
    return "\n".join(lines) + "\n"


def test_evaluate_pairs_end_to_end_on_a_prepare_output(tiny_checkpoint, lfw_like, tmp_path):
    out, people = lfw_like
    ten_fold = _write(tmp_path, "tenfold.txt", "10\t1\n" + _pairs_text(people, 10))
    report = verification.evaluate_pairs(tiny_checkpoint, [ten_fold], out, device="cpu", baseline=False, n_boot=20)
    s = report.summary
    assert s["protocol"] == "10-fold" and s["model"]["n_pairs"] == 20 and s["n_missing_images"] == 0
    assert len(s["model"]["fold_accuracies"]) == 10
    assert s["model"]["tar_at_far"]["0.001"] == evaluate.NOT_MEASURABLE
    assert report.scores["model"].shape == (20,)

    train = _write(tmp_path, "train.txt", _pairs_text(people, 6))
    test = _write(tmp_path, "test.txt", _pairs_text(people, 4) + f"{people[7]}\t1\t{people[0]}\t9\n")  # _0009 is missing
    report = verification.evaluate_pairs(tiny_checkpoint, [train, test], out, device="cpu", n_boot=20)
    s = report.summary
    assert s["protocol"] == "train/test"
    assert s["random_baseline"]["fingerprint"] != s["fingerprint"]
    assert set(report.scores) == {"model", "random_baseline"}
    assert s["model"]["n_pairs"] == 8 and s["model"]["n_pairs_skipped"] == 1 and s["n_missing_images"] == 1
    assert s["model"]["n_impostor"] == 4
    for name in ("model", "random_baseline"):  # test-file accuracy at the threshold chosen on the train file
        decided = report.scores[name] >= report.thresholds[name]
        assert s[name]["accuracy"] == pytest.approx(np.mean(decided == report.labels))


def test_evaluate_open_set_end_to_end_on_a_prepare_output(tiny_checkpoint, lfw_like):
    out, people = lfw_like
    report = identification.evaluate_open_set(tiny_checkpoint, out, device="cpu", n_boot=20, fpir_targets=(0.5, 0.01))
    s = report.summary
    assert (s["n_enrolled_identities"], s["n_distractor_identities"], s["n_templates"]) == (5, 3, 5)
    m = s["model"]
    assert (m["n_mated_probes"], m["n_nonmated_probes"]) == (15, 3)
    assert m["rank5"] == 1.0  # only 5 people are enrolled
    assert m["dir_at_fpir"]["0.01"] == evaluate.NOT_MEASURABLE  # 3 strangers cannot show 1 %
    assert isinstance(m["dir_at_fpir"]["0.5"], float)
    assert set(report.curves) == {"model", "random_baseline"}
    assert s["random_baseline"]["n_mated_probes"] == 15


def test_evaluate_open_set_distractor_folder_probes_as_strangers_even_under_an_enrolled_name(tiny_checkpoint, lfw_like):
    """The same 23 photos as a distractor folder: all non-mated, although 5 of its people share enrolled names."""
    out, people = lfw_like
    report = identification.evaluate_open_set(tiny_checkpoint, out, device="cpu", baseline=False, n_boot=20,
                                        fpir_targets=(0.1,), distractors=out)
    s = report.summary
    assert (s["n_enrolled_identities"], s["n_distractor_identities"]) == (5, 3 + 8)
    assert (s["model"]["n_mated_probes"], s["model"]["n_nonmated_probes"]) == (15, 3 + 23)
    # the enrolled photos themselves are among the distractors, scoring 1.0: FPIR 10 % needs a threshold above them
    assert s["model"]["threshold_at_fpir"]["0.1"] > 0.999
    assert s["distractors"] == str(out) and s["n_missing_images"] == 0
    with pytest.raises(ValueError, match="no distractor photos in split"):
        identification.evaluate_open_set(tiny_checkpoint, out, device="cpu", baseline=False, distractors=out,
                                   distractor_splits=["holdout"])


def test_evaluate_pairs_on_raw_photos_detects_faces_once_and_counts_centre_crops(tiny_checkpoint, tmp_path, monkeypatch):
    """Real MTCNN on real photos in LFW's layout; a photo with no face falls back to its centre crop."""
    people = sorted(p.name for p in SAMPLE.iterdir())[:3]
    for person in people:
        (tmp_path / "images" / person).mkdir(parents=True)
        for i, src in enumerate(sorted((SAMPLE / person).glob("*.jpg"))[:2], start=1):
            (tmp_path / "images" / person / f"{person}_{i:04d}.jpg").write_bytes(src.read_bytes())
    (tmp_path / "images" / "Wall").mkdir()
    Image.new("RGB", (120, 120), (200, 190, 180)).save(tmp_path / "images" / "Wall" / "Wall_0001.jpg")
    a, b, c = people
    train = _write(tmp_path, "train.txt", f"{a} 1 2\n{b} 1 2\n{a} 1 {b} 1\n{b} 2 {c} 1\n")
    test = _write(tmp_path, "test.txt", f"{c} 1 2\n{a} 1 2\n{c} 2 Wall 1\n{a} 2 {c} 1\n")
    from facesearch.data.detect import FaceDetector

    detected = []
    real_detect = FaceDetector.detect
    monkeypatch.setattr(FaceDetector, "detect", lambda self, images: detected.extend(images) or real_detect(self, images))
    report = verification.evaluate_pairs(tiny_checkpoint, [train, test], tmp_path / "images", device="cpu",
                                         baseline=True, n_boot=20)
    s = report.summary
    assert s["n_images"] == 7 and s["n_missing_images"] == 0
    assert s["n_center_crop_fallback"] == 1  # the wall
    assert s["model"]["n_pairs"] == 4 and s["model"]["n_pairs_skipped"] == 0
    assert len(detected) == 7  # one face-finding pass for the trained model and its random baseline together
    assert s["random_baseline"]["n_pairs"] == 4


@pytest.mark.slow
def test_cli_evaluate_pairs_open_set_and_closed_set(tiny_checkpoint, lfw_like, tmp_path):
    import json

    from typer.testing import CliRunner

    from facesearch.cli import app

    out, people = lfw_like
    runner = CliRunner()
    results = tmp_path / "results.jsonl"
    train = _write(tmp_path, "train.txt", _pairs_text(people, 6))
    test = _write(tmp_path, "test.txt", _pairs_text(people, 4))
    common = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--results", str(results), "--bootstrap", "20"]
    r = runner.invoke(app, ["evaluate", "pairs", str(train), str(test), str(out), *common, "--json", "--out", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout[r.stdout.index("{"):])
    assert record["protocol"] == "train/test" and "date" in record and record["fingerprint"]
    assert (tmp_path / "plots" / "roc.png").is_file() and (tmp_path / "plots" / "similarity_histogram.png").is_file()

    r = runner.invoke(app, ["evaluate", "open-set", str(out), *common, "--no-baseline", "--out", str(tmp_path / "plots")])
    assert r.exit_code == 0, r.output
    assert "rank-1" in r.stdout and "DIR@FPIR=0.1: not measurable" in r.stdout  # 3 strangers
    assert (tmp_path / "plots" / "dir_fpir.png").is_file()
    assert [x["kind"] for x in evaluate.read_results(results)] == ["pairs", "open-set"]
    r = runner.invoke(app, ["evaluate", "open-set", str(out), *common, "--no-baseline", "--distractors", str(out)])
    assert r.exit_code == 0, r.output
    assert "11 never-enrolled identities as distractors" in r.stdout and "26 non-mated" in r.stdout
    r = runner.invoke(app, ["evaluate", "open-set", str(out), *common, "--distractors", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "no such folder of distractor photos" in r.output

    r = runner.invoke(app, ["evaluate", "pairs", str(tmp_path / "nope.txt"), str(out), *common])
    assert r.exit_code == 1 and "nope.txt: no such file" in r.output
    r = runner.invoke(app, ["evaluate", "pairs", str(VIEW1_TEST), str(out), *common])
    assert r.exit_code == 1 and "train file and a test file" in r.output
    r = runner.invoke(app, ["evaluate", "closed-set", str(tiny_checkpoint), "--device", "cpu", "--results", str(results)])
    assert r.exit_code == 1 and "does not say which data" in r.output  # this checkpoint records no dataset


def test_cli_calibrate_stores_the_threshold_in_the_gallery(tiny_checkpoint, tmp_path):
    import json

    from typer.testing import CliRunner

    from facesearch.cli import app
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery, NewFace

    people = sorted(p.name for p in SAMPLE.iterdir())[:5]
    embedder = Embedder(tiny_checkpoint, device="cpu")
    with Gallery(tmp_path / "g") as gallery:  # enroll the first photo of two people
        faces = [NewFace(p, embedder.embed_photo(sorted((SAMPLE / p).glob("*.jpg"))[0], "largest")[0][1]) for p in people[:2]]
        gallery.add_faces(faces, embedder.fingerprint)
    for p in people:  # calibration photos: 2 more of each enrolled person, 1 of each of 3 strangers
        (tmp_path / "cal" / p).mkdir(parents=True)
        for src in sorted((SAMPLE / p).glob("*.jpg"))[1 : 3 if p in people[:2] else 2]:
            (tmp_path / "cal" / p / src.name).write_bytes(src.read_bytes())
    args = ["calibrate", str(tmp_path / "cal"), "--gallery", str(tmp_path / "g"), "--checkpoint", str(tiny_checkpoint),
            "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "at least 100 are needed" in r.output  # 3 strangers cannot show 1 %
    r = CliRunner().invoke(app, [*args, "--fpir", "0.34", "--json"])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)
    assert (cal["n_mated"], cal["n_nonmated"]) == (4, 3) and cal["fpir"] <= 0.34
    with Gallery(tmp_path / "g", create=False) as gallery:
        threshold, meta = gallery.threshold()
    assert threshold == pytest.approx(cal["threshold"]) and meta["target_fpir"] == 0.34
    r = CliRunner().invoke(app, [*args, "--balanced", "--fpir", "0.34"])
    assert r.exit_code != 0 and "not both" in r.output
    r = CliRunner().invoke(app, [*args, "--balanced"])
    assert r.exit_code == 1 and "needs at least 10 of each" in r.output  # 4 + 3 photos: too few to balance


def test_cli_calibrate_refuses_a_gallery_with_nobody_enrolled_and_stores_nothing(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from facesearch.cli import app
    from facesearch.gallery import Gallery

    people = sorted(p.name for p in SAMPLE.iterdir())[:3]
    for p in people:
        (tmp_path / "cal" / p).mkdir(parents=True)
        src = sorted((SAMPLE / p).glob("*.jpg"))[0]
        (tmp_path / "cal" / p / src.name).write_bytes(src.read_bytes())
    with Gallery(tmp_path / "g"):  # a gallery, empty
        pass
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "cal"), "--gallery", str(tmp_path / "g"), "--checkpoint",
                                 str(tiny_checkpoint), "--device", "cpu", "--fpir", "0.5"])
    assert r.exit_code == 1 and "nobody is enrolled" in r.output
    with Gallery(tmp_path / "g", create=False) as gallery:
        assert gallery.threshold()[1] is None  # still the default, uncalibrated
    (tmp_path / "plain").mkdir()
    r = CliRunner().invoke(app, ["calibrate", str(tmp_path / "cal"), "--gallery", str(tmp_path / "plain"),
                                 "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])
    assert r.exit_code != 0 and "not a gallery" in r.output and not (tmp_path / "plain" / "gallery.db").exists()
