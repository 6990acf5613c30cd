"""Embedder: shapes, normalisation, flip averaging, batching, and detection through prepare's code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from builders import tiny_checkpoint


@pytest.fixture(scope="module")
def embedder(checkpoint):
    from facesearch.embed import Embedder

    return Embedder(checkpoint, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def crops(sample_photos):
    paths = sorted(sample_photos.glob("*/*.jpg"))[:5]
    return [Image.open(p).convert("RGB").resize((64, 64)) for p in paths]


def test_embed_crops_are_unit_vectors_of_the_fc7_width(embedder, crops):
    x = embedder.embed_crops(crops)
    assert x.shape == (5, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_crops([]).shape == (0, 64)


def test_batching_does_not_change_embeddings(embedder, crops):
    together = embedder.embed_crops(crops)  # batches of 3 and 2
    alone = np.concatenate([embedder.embed_crops([c]) for c in crops])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_flip_averaging_makes_a_face_and_its_mirror_identical(checkpoint, crops):
    from facesearch.checkpoint import load_checkpoint
    from facesearch.embed import Embedder

    loaded = load_checkpoint(checkpoint)
    flipped = Embedder(loaded, device="cpu", flip=True)
    plain = Embedder(loaded, device="cpu", flip=False)
    mirror = ImageOps.mirror(crops[0])
    a, b = flipped.embed_crops([crops[0], mirror])
    np.testing.assert_allclose(a, b, atol=1e-5)
    c, d = plain.embed_crops([crops[0], mirror])
    assert not np.allclose(c, d, atol=1e-3)
    assert flipped.fingerprint == plain.fingerprint == loaded.fingerprint


def test_embed_photo_detects_selects_and_crops(embedder, sample_photos):
    photo = sorted(sample_photos.glob("*/*.jpg"))[0]
    faces = embedder.embed_photo(photo, select="largest")
    assert len(faces) == 1
    face, vector = faces[0]
    w, h = Image.open(photo).size
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= w + 5 and 0 <= y1 < y2 <= h + 5
    assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    assert len(embedder.embed_photo(Image.open(photo), select="all")) >= 1
    with pytest.raises(ValueError):
        embedder.embed_photo(photo, select="biggest")


def test_faces_of_answers_every_photo_in_order_whatever_form_it_comes_in(embedder, sample_photos, tmp_path):
    """One loop for paths, bytes, decoded images and Decoded photos; a failure is a value, not the end of the run."""
    from facesearch.embed import Decoded

    photo = sorted(sample_photos.glob("*/*.jpg"))[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    blank = Image.new("RGB", (120, 120), (90, 90, 90))
    image = Image.open(photo).convert("RGB")
    given = [photo, text, photo.read_bytes(), blank, Decoded(tmp_path / "kept.jpg", image), image, b""]
    out = list(embedder.faces_of(given, select="largest", batch_size=3))  # batches of 3, 3 and 1
    assert [r.status for r in out] == ["ok", "not_an_image", "ok", "no_face", "ok", "ok", "not_an_image"]
    assert [r.path for r in out] == [str(photo), str(text), None, None, str(tmp_path / "kept.jpg"), None, None]
    assert out[1].image is None and out[1].reason and out[3].image is not None  # undecodable vs faceless
    vectors = [r.faces[0].embedding for r in out if r.ok]
    for v in vectors[1:]:  # the same photo gives the same face, however it was handed over
        np.testing.assert_allclose(v, vectors[0], atol=1e-5)
    crops_only = next(embedder.faces_of([photo], select="all", embed=False))
    assert crops_only.faces and all(f.embedding is None and f.crop.size == (embedder.crop.size,) * 2
                                    for f in crops_only.faces)


def test_select_only_refuses_a_photo_of_several_faces(embedder, sample_photos):
    photo = Image.open(sorted(sample_photos.glob("*/*.jpg"))[0]).convert("RGB")
    group = Image.new("RGB", (photo.width * 2, photo.height), (128, 128, 128))
    group.paste(photo, (0, 0))
    group.paste(photo, (photo.width, 0))
    alone, several = embedder.faces_of([photo, group], select="only")
    assert alone.ok and len(alone.faces) == 1 == alone.found
    assert several.status == "several_faces" and not several.faces and several.found >= 2


def test_embed_files_reports_unreadable_and_faceless_photos(embedder, sample_photos, tmp_path):
    from facesearch.embed import embed_files, write_embeddings

    photo = sorted(sample_photos.glob("*/*.jpg"))[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (120, 120), (90, 90, 90)).save(blank)
    result = embed_files(embedder, [photo, text, blank])
    assert [f.path for f in result.faces] == [str(photo)]
    assert result.failures[str(text)].startswith("not_an_image")
    assert result.failures[str(blank)].startswith("no_face")
    npy, meta = write_embeddings(result, tmp_path / "out" / "x.npy")
    assert np.load(npy).shape == (1, 64) and meta.is_file()


def test_the_query_face_finder_follows_the_checkpoints_detector_settings(tmp_path):
    """for_queries builds its MTCNN from what the checkpoint records; older checkpoints get the defaults, and an
    explicit min_face (who --min-face) wins."""
    import torch

    from facesearch.checkpoint import Preprocess, save_checkpoint
    from facesearch.data.detect import DetectorSettings
    from facesearch.embed import Embedder
    from facesearch.models.vgg import VGG16, VGGConfig

    old = Embedder.for_queries(tiny_checkpoint(tmp_path / "old.pt"), "cpu").detector
    assert (old.min_face_size, old.thresholds) == (40, (0.6, 0.7, 0.7)) == (DetectorSettings().min_face_size,
                                                                          DetectorSettings().thresholds)
    torch.manual_seed(0)
    model = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16))
    recorded = {"size": 64, "margin": 0.2, "align": False, "detector": {"min_face_size": 24, "thresholds": [0.5, 0.6, 0.6]}}
    path = save_checkpoint(tmp_path / "new.pt", model, ["a", "b", "c"], Preprocess(32), crop=recorded)
    new = Embedder.for_queries(path, "cpu")
    assert (new.detector.min_face_size, new.detector.thresholds) == (24, (0.5, 0.6, 0.6))
    assert new.crop.size == 64
    assert Embedder.for_queries(path, "cpu", min_face=60).detector.min_face_size == 60


def test_embed_command_names_each_failure_and_writes_nothing_when_no_face_was_embedded(checkpoint, sample_photos,
                                                                                       tmp_path):
    from builders import run_cli

    photo = sorted(sample_photos.glob("*/*.jpg"))[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").touch()
    (bad / "notes.jpg").write_text("not a photo")
    out = tmp_path / "e.npy"
    failing = [bad / "empty.jpg", tmp_path / "nonexist.jpg"]
    for given, named in ((failing, failing), ([bad], [bad / "empty.jpg", bad / "notes.jpg"])):
        result = run_cli("embed", *given, "-o", out, "-c", checkpoint, "--device", "cpu", ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output and "nothing written" in result.stderr
        assert all(f"{p}: " in result.stderr for p in named), result.stderr
        assert not out.exists() and not out.with_suffix(".json").exists()
    some = run_cli("embed", bad, photo, "-o", out, "-c", checkpoint, "--device", "cpu", ok=False)
    assert some.exit_code == 2 and "2 of 3 photos gave no face" in some.stderr
    assert f"{bad / 'notes.jpg'}: " in some.stderr
    assert np.load(out).shape == (1, 64) and f"→ {out} " in some.stdout


@pytest.mark.parametrize("out", ["e1.txt", "folder"])
def test_embed_command_refuses_an_out_it_would_not_write_as_given(checkpoint, sample_photos, tmp_path, out):
    from builders import run_cli

    (tmp_path / "folder").mkdir()
    photo = sorted(sample_photos.glob("*/*.jpg"))[0]
    result = run_cli("embed", photo, "-o", tmp_path / out, "-c", checkpoint, "--device", "cpu", ok=False)
    assert result.exit_code == 1 and f"--out {tmp_path / out}: " in result.stderr
    assert not list(tmp_path.glob("*.npy"))


def test_a_photos_faces_do_not_depend_on_the_photos_detected_with_it(sample_photos):
    """The photo below (191x256) had 3 faces alone and 1 in a batch padded to larger photos' canvas: a group photo
    refused in one `enroll` run was enrolled in another. Its faces are now the same in any batch."""
    from facesearch.data.detect import FaceDetector, canvas_of
    from facesearch.data.images import load_image

    group = load_image(sample_photos / "07222" / "041086.jpg")
    others = [load_image(p) for p in sorted(sample_photos.glob("*/*.jpg"))[:15]]  # 156 to 256 px wide
    assert len({im.size for im in others + [group]}) > 5 and any(im.size > group.size for im in others)
    detector = FaceDetector(device="cpu")
    alone = detector.detect([group])[0]
    assert alone

    def same(found, exact: bool) -> bool:
        tolerance = 0 if exact else 1e-2  # photos sharing its canvas share its MTCNN call: float rounding only
        return len(found) == len(alone) and all(
            np.allclose(a.box, b.box, atol=tolerance) and np.allclose(a.landmarks, b.landmarks, atol=tolerance)
            and abs(a.prob - b.prob) <= tolerance for a, b in zip(alone, found))

    other_canvas = [im for im in others if canvas_of(im.size[::-1]) != canvas_of(group.size[::-1])]
    assert same(detector.detect(other_canvas[:3] + [group])[3], exact=True)
    for batch in (others[:3] + [group], [group] + others, others[:7] + [group] + others[7:]):
        assert same(detector.detect(batch)[batch.index(group)], exact=False), [im.size for im in batch]


def test_a_model_that_is_not_a_face_model_embeds_nothing(tmp_path):
    import torch

    from facesearch.checkpoint import CheckpointError, load_checkpoint
    from facesearch.embed import Embedder

    path = tiny_checkpoint(tmp_path / "tiny.pt")
    cifar = tmp_path / "cifar.pt"
    torch.save({**torch.load(path, weights_only=True), "dataset": {"kind": "cifar10", "root": "cifar"}}, cifar)
    for model in (cifar, load_checkpoint(cifar)):  # a path, or a model loaded for something else
        with pytest.raises(CheckpointError, match="a CIFAR-10 image classifier, not a face model") as error:
            Embedder(model, device="cpu")
        assert "cifar.pt" in str(error.value)
    assert load_checkpoint(cifar).kind == "cifar10"  # what `cifar10 evaluate` and `explain` load it as
    assert Embedder(path, device="cpu").loaded.kind is None  # a checkpoint that does not say passes
