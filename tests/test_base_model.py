"""The base model shipped inside the package: it loads, it never saw the people the demo and benchmarks score,
and every command uses it (or the model a gallery was built with) when no checkpoint is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import run_cli as run, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_model_loads_compact_and_embeds():
    from facesearch.checkpoint import base_model_path, load_checkpoint, read_checkpoint
    from facesearch.embed import Embedder

    path = base_model_path()
    assert path.is_relative_to(REPO / "facesearch") and path.stat().st_size < 20 * 2**20
    raw = read_checkpoint("base")
    assert {t.dtype for t in raw["model"].values() if t.is_floating_point()} == {torch.float16}
    assert "optimizer" not in raw and "rng" not in raw  # inference and --init only
    loaded = load_checkpoint("base")
    assert next(loaded.model.parameters()).dtype == torch.float32
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert loaded.fingerprint in card  # the card names the exact weights it describes
    face = Image.open(sorted((REPO / "sample" / "photos" / "07201").glob("*.jpg"))[0]).convert("RGB")
    vectors = Embedder("base", device="cpu").embed_crops([face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert vectors.shape == (2, loaded.config.embedding_width)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.99  # flip-averaged: a face and its mirror embed alike


def test_the_base_model_never_saw_the_people_it_is_scored_on():
    from facesearch.checkpoint import base_model_path, load_checkpoint

    from facesearch.checkpoint import read_checkpoint

    loaded = load_checkpoint("base")
    trained = set(read_checkpoint("base")["dataset"]["identities"])  # whose faces trained, named or not
    assert set(loaded.class_names) <= trained
    listed = {line.strip() for line in (base_model_path().parent / "never_seen.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    sample = {d.name for part in ("photos", "train", "strangers") for d in (REPO / "sample" / part).iterdir()
              if d.is_dir()}
    assert sample <= listed and not trained & listed
    assert len(trained) > 2000  # thousands of people: what makes an embedding transfer


@pytest.fixture(scope="module")
def people(sample_photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    for person in sorted(sample_photos.iterdir())[:3]:
        (root / person.name).mkdir()
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, root / person.name / photo.name)
    return root


@pytest.mark.slow
def test_a_gallery_built_without_a_checkpoint_answers_every_command_without_one(people, sample_photos, tmp_path):
    from facesearch.gallery import Gallery

    gallery = tmp_path / "g"
    out = json.loads(run("enroll", people, "-g", gallery, "--device", "cpu", "--json").stdout)
    assert out["counts"] == {"enrolled": 6}
    with Gallery(gallery, create=False) as g:
        assert g.model_source == "base"
    person = sorted(people.iterdir())[0].name
    probe = sorted((sample_photos / person).glob("*.jpg"))[5]  # not enrolled
    answer = json.loads(run("who", probe, "-g", gallery, "--device", "cpu", "--json").stdout)
    assert answer["faces"] and answer["faces"][0]["matches"][0]["name"] == person

    calib = tmp_path / "calib"
    for src in [*sorted(sample_photos.iterdir())[:3], *sorted(sample_photos.iterdir())[10:13]]:
        (calib / src.name).mkdir(parents=True)
        for photo in sorted(src.glob("*.jpg"))[6:10]:
            shutil.copy(photo, calib / src.name / photo.name)
    cal = json.loads(run("calibrate", calib, "-g", gallery, "--balanced", "--device", "cpu", "--json").stdout)
    assert cal["n_mated"] == 12 and cal["n_nonmated"] == 12
    exp = run("explain", probe, "-g", gallery, "-o", tmp_path / "explain", "--seeds", "1", "--maps", "2",
              "--device", "cpu", "--json")
    assert json.loads(exp.stdout)["answer"] == person


def test_a_gallery_remembers_a_custom_checkpoint(people, tmp_path):
    from facesearch.gallery import Gallery

    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    run("enroll", people, "-g", tmp_path / "g", "-c", checkpoint, "--device", "cpu")
    with Gallery(tmp_path / "g", create=False) as g:
        assert g.model_source == str(checkpoint.resolve())
    photo = sorted((people / sorted(p.name for p in people.iterdir())[0]).glob("*.jpg"))[0]
    run("who", photo, "-g", tmp_path / "g", "--device", "cpu")  # the tiny model, not the base: no mismatch
    mixed = run("enroll", people, "-g", tmp_path / "g", "-c", "base", "--device", "cpu", ok=False)
    assert mixed.exit_code == 1 and "reembed" in mixed.output


def test_evaluate_and_embed_use_the_base_model_by_default(sample_photos, tmp_path):
    from facesearch.checkpoint import load_checkpoint

    photo = sorted((sample_photos / "07201").glob("*.jpg"))[0]
    run("embed", photo, "-o", tmp_path / "e.npy", "--device", "cpu")
    assert np.load(tmp_path / "e.npy").shape == (1, load_checkpoint("base").config.embedding_width)
    for person in sorted(sample_photos.iterdir())[:4]:
        (tmp_path / "photos" / person.name).mkdir(parents=True)
        for src in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(src, tmp_path / "photos" / person.name / src.name)
    result = json.loads(run("evaluate", "open-set", tmp_path / "photos", "--enroll", "2", "--no-baseline",
                            "--bootstrap", "20", "--results", tmp_path / "r.jsonl", "--device", "cpu",
                            "--json").stdout)
    assert result["fingerprint"] == load_checkpoint("base").fingerprint


def test_train_init_base_fine_tunes_the_shipped_model(tmp_path):
    from facesearch.checkpoint import load_checkpoint, read_checkpoint
    from builders import make_prepared_faces

    data = make_prepared_faces(tmp_path / "data", n_ids=3, per_id=5, size=64)
    run("train", data, "--out", tmp_path / "run", "--init", "base", "--epochs", "2", "--batch-size", "6",
        "--optimizer", "adamw", "--device", "cpu")
    tuned, base = read_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint("base")
    assert tuned["init"] == {"source": "base", "fingerprint": base.fingerprint}
    assert tuned["model_config"] == {**base.config.to_dict(), "num_classes": 3}
    assert tuned["preprocess"]["input_size"] == base.preprocess.input_size


def test_other_weights_passed_off_as_the_base_model_are_refused(sample_photos, tmp_path, monkeypatch):
    from facesearch import checkpoint
    from facesearch.checkpoint import CheckpointError, fingerprint, load_checkpoint

    raw = torch.load(checkpoint.base_model_path(), weights_only=True)
    assert fingerprint(raw["model"]) == raw["fingerprint"]  # the shipped file's weights are the ones it names
    hashed = []
    monkeypatch.setattr(checkpoint, "fingerprint", lambda state: hashed.append(1) or fingerprint(state))
    assert load_checkpoint("base").fingerprint == raw["fingerprint"] and len(hashed) == 1  # hashed once a load

    generator = torch.Generator().manual_seed(0)
    other = {k: torch.randn(v.shape, generator=generator).to(v.dtype) if v.is_floating_point() else v
             for k, v in raw["model"].items()}
    forged = tmp_path / "model.pt"
    torch.save({**raw, "model": other}, forged)  # random weights carrying the base model's fingerprint
    monkeypatch.setattr(checkpoint, "base_model_path", lambda: forged)
    with pytest.raises(CheckpointError, match="do not match its recorded fingerprint") as error:
        load_checkpoint("base")
    assert str(forged) in str(error.value) and "damaged or altered" in str(error.value)
    photo = sorted((sample_photos / "07201").glob("*.jpg"))[0]
    result = run("embed", photo, "-o", tmp_path / "e.npy", "--device", "cpu", ok=False)
    assert result.exit_code == 1 and str(forged) in result.stderr and not (tmp_path / "e.npy").exists()
