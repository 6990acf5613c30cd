"""Distillation from a teacher (``train --teacher``): the vector cache, the loss, faces without names, the missing
extra. A stand-in teacher (a fixed function of the pixels) keeps these tests fast and free of dlib; the tests of
dlib itself skip unless the extra is installed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facesearch import teacher as teacher_module
from facesearch.checkpoint import load_checkpoint, read_checkpoint
from facesearch.training.augment import AugmentConfig
from facesearch.data.datasets import UNLABELLED, face_sources
from facesearch.data.manifest import read_manifest, write_manifest
from facesearch.models.vgg import VGG16, VGGConfig
from facesearch.teacher import TeacherInfo, VectorCache, teacher_vectors
from facesearch.training import TrainConfig, model_config, train

from builders import make_prepared_faces, run_cli

CROP = {"size": 32, "margin": 0.2, "align": False}
TINY = {"fc_width": 32, "fc7_width": 8, "dropout": 0.0, "embedding": "pre_relu", "conv_width": 0.25}


class StandIn:
    """A teacher whose 8-d vector is the mean colour of the crop's four quadrants' halves: a fixed, learnable
    function of the pixels. Counts the crops it encodes."""

    name, dim = "dlib", 8

    def __init__(self):
        self.info = TeacherInfo("dlib", 8, "stand-in 1", "none", "0123456789abcdef", "test only")
        self.encoded = 0

    def encode(self, crops, crop):
        self.encoded += len(crops)
        out = []
        for image in crops:
            x = np.asarray(image, dtype=np.float32) / 255
            h, w = x.shape[:2]
            quads = [x[:h // 2, :w // 2], x[:h // 2, w // 2:], x[h // 2:, :w // 2], x[h // 2:, w // 2:]]
            out.append([q[..., c].mean() for q in quads for c in (0, 2)])
        return np.asarray(out, dtype=np.float32)


@pytest.fixture
def stand_in(monkeypatch) -> StandIn:
    teacher = StandIn()
    monkeypatch.setattr(teacher_module, "load_teacher", lambda name: teacher)
    return teacher


@pytest.fixture
def faces(tmp_path) -> Path:
    return make_prepared_faces(tmp_path / "prepared", n_ids=3, per_id=5)  # 12 train + 3 val crops


def _crops(data: Path) -> list[Path]:
    return [data / r.crop for r in read_manifest(data)]


def test_the_cache_encodes_each_crop_once_and_follows_its_content(faces, stand_in):
    crops = _crops(faces)
    first, info = teacher_vectors("dlib", faces, crops, CROP, workers=1)
    assert first.shape == (15, 8) and stand_in.encoded == 15 and info.name == "dlib"
    again, _ = teacher_vectors("dlib", faces, crops, CROP, workers=1)  # a later run: nothing encoded
    assert stand_in.encoded == 15 and np.array_equal(first, again)
    assert len(VectorCache(faces, info).vectors) == 15  # on disk, beside the prepared data
    assert (faces / "teacher" / "dlib-0123456789abcdef" / "teacher.json").is_file()
    # a crop re-cut (other pixels) gets a new vector; the others are reused
    from PIL import Image

    Image.new("RGB", (32, 32), (250, 10, 10)).save(crops[0])
    changed, _ = teacher_vectors("dlib", faces, crops, CROP, workers=1)
    assert stand_in.encoded == 16
    assert not np.allclose(changed[0], first[0]) and np.array_equal(changed[1:], first[1:])
    # other crop settings are another key: the face box the teacher reads is derived from them
    teacher_vectors("dlib", faces, crops[:2], {**CROP, "margin": 0.4}, workers=1)
    assert stand_in.encoded == 18


def test_a_stopped_computation_resumes_from_its_written_parts(faces, stand_in, monkeypatch):
    monkeypatch.setattr(teacher_module, "_PART_SIZE", 4)
    calls = {"n": 0}
    encode = stand_in.encode

    def dies_after_two_parts(crops, crop):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return encode(crops, crop)

    monkeypatch.setattr(stand_in, "encode", dies_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        teacher_vectors("dlib", faces, _crops(faces), CROP, workers=1)
    assert stand_in.encoded == 8
    monkeypatch.setattr(stand_in, "encode", encode)
    teacher_vectors("dlib", faces, _crops(faces), CROP, workers=1)
    assert stand_in.encoded == 15  # only the 7 not written before


def test_distillation_raises_the_cosine_to_the_teacher(faces, stand_in, tmp_path):
    cfg = TrainConfig(epochs=30, batch_size=12, lr=0.01, optimizer="adamw", warmup_epochs=0, teacher="dlib",
                      identity_weight=0.0, workers=1)
    result = train("faces", faces, tmp_path / "run", cfg, model_config("faces", faces, teacher=True, **TINY),
                   AugmentConfig.none())
    history = result.history
    assert history[-1]["train_teacher_cos"] > history[0]["train_teacher_cos"] + 0.2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.best_val_teacher_cos == max(h["val_teacher_cos"] for h in history)
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["teacher"]["name"] == "dlib" and best["teacher"]["licence"] == "test only"
    assert best["class_names"] == [] and best["model_config"]["num_classes"] == 0  # the teacher alone: no head
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")
    x = torch.rand(2, 3, 32, 32)
    assert loaded.model.forward_embedding(x).shape == (2, 8)
    with pytest.raises(ValueError, match="no identity head"):
        loaded.model(x)


def test_a_teacher_run_without_identities_resumes(faces, stand_in, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=6, lr=0.01, optimizer="adamw", warmup_epochs=0, teacher="dlib",
                      identity_weight=0.0, workers=1, max_steps=3)
    model = model_config("faces", faces, teacher=True, **TINY)
    first = train("faces", faces, tmp_path / "run", cfg, model, AugmentConfig.none())
    assert first.step == 3
    again = train("faces", faces, tmp_path / "run", replace(cfg, max_steps=None), resume=True)
    assert again.step == 6 and again.epoch == 3 and stand_in.encoded == 15  # the vectors came from the cache


def test_teacher_and_identity_losses_train_together_and_check_the_widths(faces, stand_in, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=12, lr=0.01, optimizer="adamw", warmup_epochs=0, teacher="dlib",
                      workers=1)
    result = train("faces", faces, tmp_path / "run", cfg,
                   model_config("faces", faces, teacher=True, head="arcface", fc_batch_norm=True, **TINY),
                   AugmentConfig.none())
    assert result.best_val_acc is not None and result.best_val_teacher_cos is not None
    assert load_checkpoint(tmp_path / "run" / "best.pt").class_names == sorted(
        p.name for p in faces.iterdir() if p.is_dir() and p.name != "teacher")
    with pytest.raises(ValueError, match=r"\(fc7_width=8 or projection=8\)"):  # the CLI says --fc7-width 8
        train("faces", faces, tmp_path / "other", cfg,
              model_config("faces", faces, teacher=True, **{**TINY, "fc7_width": 16}), AugmentConfig.none())
    projected = train("faces", faces, tmp_path / "projected", cfg,
                      model_config("faces", faces, teacher=True, **{**TINY, "fc7_width": 16, "projection": 8}),
                      AugmentConfig.none())
    assert load_checkpoint(projected.run_dir / "best.pt").model.forward_embedding(torch.rand(1, 3, 32, 32)).shape == (1, 16)


def test_one_photo_people_train_under_a_teacher_and_held_out_people_never(faces):
    rows = read_manifest(faces)
    rows[0].split, rows[0].identity = "holdout", "loner"  # one photo: a stranger, nothing to classify
    people = {r.identity for r in rows if r.identity != "loner"}
    held = sorted(people)[0]
    for r in rows:
        if r.identity == held:
            r.split = "holdout"  # a whole person held out on purpose (--holdout-identities)
    write_manifest(faces, rows)
    names, splits = face_sources(faces, unlabelled=True)
    items, labels = splits["train"]
    assert "loner" not in names and held not in names
    assert faces / rows[0].crop in items and labels[items.index(faces / rows[0].crop)] == UNLABELLED
    assert not {faces / r.crop for r in rows if r.identity == held} & set(items)
    assert len(face_sources(faces)[1]["train"][0]) == len(items) - 1  # without a teacher: no stranger


def test_an_unlabelled_folder_prepares_and_trains(stand_in, tmp_path, sample_photos):
    raw = tmp_path / "raw"
    (raw / "2023").mkdir(parents=True)
    for i, photo in enumerate(sorted((sample_photos / sorted(p.name for p in sample_photos.iterdir())[0]).glob("*.jpg"))[:3]):
        shutil.copy(photo, (raw / "2023" if i else raw) / photo.name)  # loose and in a folder: both unnamed
    run_cli("prepare", raw, tmp_path / "prepared", "--unlabelled", "--size", "32", "--workers", "1", "--device", "cpu")
    rows = [r for r in read_manifest(tmp_path / "prepared") if r.status == "ok"]
    assert len(rows) == 3 and {r.split for r in rows} == {"unlabelled"} and {r.identity for r in rows} == {""}
    refused = run_cli("train", tmp_path / "prepared", "--out", tmp_path / "plain", ok=False)
    assert refused.exit_code == 1 and "--teacher" in refused.output
    run_cli("train", tmp_path / "prepared", "--out", tmp_path / "run", "--teacher", "dlib", "--fc7-width", "8",
            "--embedding", "pre_relu", "--fc-width", "16", "--conv-width", "0.25", "--epochs", "2",
            "--batch-size", "3", "--device", "cpu", "--workers", "1")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.config.num_classes == 0 and best.extra["metrics"]["train_teacher_cos"] is not None
    from facesearch.explain import ExplainError, explain_classification

    with pytest.raises(ExplainError, match="no classes"):
        explain_classification(next((raw / "2023").glob("*.jpg")), tmp_path / "run" / "best.pt", tmp_path / "x",
                               device="cpu")


def test_without_the_extra_the_teacher_says_what_to_install(faces, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib raises ImportError
    result = run_cli("train", faces, "--out", tmp_path / "run", "--teacher", "dlib", "--fc7-width", "128",
                     "--embedding", "pre_relu", "--device", "cpu", ok=False)
    assert result.exit_code == 1
    assert "pip install 'facesearch[teacher]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()
    bogus = run_cli("train", faces, "--out", tmp_path / "run2", "--teacher", "vgg-face", ok=False)
    assert bogus.exit_code == 1 and "--teacher 'vgg-face': one of dlib" in bogus.output


def test_a_model_without_identities_still_fine_tunes_with_a_new_head(tmp_path, faces):
    torch.manual_seed(0)
    from facesearch.checkpoint import Preprocess, save_checkpoint

    embedder = VGG16(VGGConfig(num_classes=0, input_size=32, **TINY))
    save_checkpoint(tmp_path / "base.pt", embedder, [], Preprocess(32))
    cfg = TrainConfig(epochs=1, batch_size=12, lr=0.01, workers=1)
    result = train("faces", faces, tmp_path / "run", cfg, init=tmp_path / "base.pt")
    tuned = load_checkpoint(tmp_path / "run" / "best.pt")
    assert tuned.config.num_classes == 3 and result.best_val_acc is not None
    assert read_checkpoint(tmp_path / "run" / "best.pt")["init"]["source"].endswith("base.pt")
    moved = (tuned.model.fc6.weight.cpu() - embedder.fc6.weight).abs().max()
    assert moved < 0.1 < (VGG16(VGGConfig(num_classes=3, input_size=32, **TINY)).fc6.weight - embedder.fc6.weight).abs().max()


# --- dlib itself (the teacher extra) ------------------------------------------------------------------------

needs_dlib = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("dlib", "face_recognition_models")),
    reason="the teacher extra is not installed (pip install 'facesearch[teacher]'); .ci/run installs it")


@needs_dlib
def test_dlib_tells_two_people_apart_on_aligned_crops(tmp_path, sample_photos):
    people = sorted(p.name for p in sample_photos.iterdir())[:2]
    raw = tmp_path / "raw"
    for name in people:
        shutil.copytree(sample_photos / name, raw / name, ignore=lambda d, files: sorted(files)[4:])
    run_cli("prepare", raw, tmp_path / "prepared", "--align", "--workers", "1", "--device", "cpu",
            "--min-train-photos", "1")
    rows = sorted((r for r in read_manifest(tmp_path / "prepared") if r.status == "ok"), key=lambda r: r.identity)
    vectors, info = teacher_vectors("dlib", tmp_path / "prepared", [tmp_path / "prepared" / r.crop for r in rows],
                                    {"size": 112, "margin": 0.2, "align": True}, workers=1)
    assert vectors.shape == (len(rows), 128) and info.dim == 128 and "CC0" in info.licence
    same = [np.linalg.norm(vectors[i] - vectors[j]) for i in range(len(rows)) for j in range(i)
            if rows[i].identity == rows[j].identity]
    other = [np.linalg.norm(vectors[i] - vectors[j]) for i in range(len(rows)) for j in range(i)
             if rows[i].identity != rows[j].identity]
    assert np.median(same) < 0.6 < np.median(other)  # dlib's own rule: the same person within 0.6
    assert json.loads((tmp_path / "prepared" / "teacher" / f"dlib-{info.weights_sha256}" / "teacher.json")
                      .read_text())["weights"].startswith("dlib_face_recognition_resnet_model_v1.dat")
