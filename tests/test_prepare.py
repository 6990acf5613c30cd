"""prepare: a corpus of every bad and odd kind of file next to real photos; each gets its status and
reason, nothing aborts, crops are square RGB, reruns detect nothing, changes are picked up."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesearch.data import prepare as prep
from facesearch.data.detect import FaceDetector
from facesearch.data.manifest import STATUSES, ManifestRow, read_manifest, read_settings
from facesearch.data.prepare import PrepareSettings, assign_splits, crop_path, prepare, safe_folder
from builders import png_with_size

SETTINGS = PrepareSettings(min_photos=2, val=0.25, test=0.25)

# file → (status, words its reason must contain); n_faces checked separately for group photos.
EXPECTED = {
    "07201/a.jpg": ("ok", ""),
    "07201/b.jpg": ("ok", ""),
    "07201/b_copy.jpg": ("duplicate", "07201/b.jpg"),
    "07201/shared.jpg": ("conflict", "'07203'"),
    "07203/a.jpg": ("ok", ""),
    "07203/shared_too.jpg": ("conflict", "'07201'"),
    "s1/1.pgm": ("ok", ""),
    "odd/truncated.jpg": ("truncated", "ends early"),
    "odd/empty.jpg": ("not_an_image", "empty"),
    "odd/text.jpg": ("not_an_image", "Pillow"),
    "odd/rgba.png": ("ok", ""),
    "odd/la.png": ("ok", ""),
    "odd/palette.png": ("ok", ""),
    "odd/cmyk.jpg": ("ok", ""),
    "odd/sixteen_bit.png": ("ok", ""),
    "odd/grey.jpg": ("ok", ""),
    "odd/rotated.jpg": ("ok", ""),
    "odd/animated.gif": ("ok", ""),
    "odd/bomb.png": ("too_large", "decompression"),
    "odd/tiny.png": ("too_small", "16x16"),
    "odd/flat.jpg": ("no_face", "no face"),
    "odd/two_faces.jpg": ("ok", "2 faces"),
    "odd/phone.heic": ("not_an_image", "HEIC"),
    "loose.jpg": ("no_identity", "identity folder"),
}


def build_corpus(raw: Path, sample_photos: Path, sample_orl: Path) -> None:
    photos = sorted(sample_photos.glob("07201/*.jpg"))[:3] + sorted(sample_photos.glob("07203/*.jpg"))[:1]
    face = Image.open(photos[0]).convert("RGB")
    other = Image.open(photos[3]).convert("RGB")
    for folder in ("07201", "07203", "s1", "odd"):
        (raw / folder).mkdir(parents=True)
    shutil.copy(photos[0], raw / "07201/a.jpg")
    shutil.copy(photos[1], raw / "07201/b.jpg")
    shutil.copy(photos[1], raw / "07201/b_copy.jpg")
    shutil.copy(photos[2], raw / "07201/shared.jpg")
    shutil.copy(photos[2], raw / "07203/shared_too.jpg")
    shutil.copy(photos[3], raw / "07203/a.jpg")
    shutil.copy(sample_orl / "s1/1.pgm", raw / "s1/1.pgm")
    shutil.copy(photos[0], raw / "loose.jpg")
    _odd_files(raw / "odd", face, other)


def _odd_files(odd: Path, face: Image.Image, other: Image.Image) -> None:
    face.save(odd / "whole.jpg", quality=95)
    data = (odd / "whole.jpg").read_bytes()
    (odd / "whole.jpg").unlink()
    (odd / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("not a photo\n")
    rgba = other.convert("RGBA")
    rgba.putalpha(Image.new("L", other.size, 200))
    rgba.save(odd / "rgba.png")
    other.convert("LA").save(odd / "la.png")
    other.convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "palette.png", transparency=0)
    other.convert("CMYK").save(odd / "cmyk.jpg", quality=95)
    grey = np.asarray(other.convert("L"), dtype=np.uint16) * 256 + 100
    Image.fromarray(grey).save(odd / "sixteen_bit.png")
    other.convert("L").save(odd / "grey.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    other.transpose(Image.Transpose.ROTATE_90).save(odd / "rotated.jpg", exif=exif, quality=95)
    other.save(odd / "animated.gif", save_all=True, append_images=[Image.new("RGB", other.size)], duration=50)
    png_with_size(odd / "bomb.png", 30000, 30000)
    Image.new("RGB", (16, 16), (200, 150, 120)).save(odd / "tiny.png")
    Image.new("RGB", (200, 240), (180, 160, 140)).save(odd / "flat.jpg")
    pair = Image.new("RGB", (face.width + other.width, max(face.height, other.height)), (128, 128, 128))
    pair.paste(face, (0, 0))
    pair.paste(other, (face.width, 0))
    pair.save(odd / "two_faces.jpg", quality=95)
    (odd / "phone.heic").write_bytes(HEIC_HEAD + bytes(64))  # an iPhone photo: a format Pillow does not read


HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"  # the first bytes of a HEIC photo


@pytest.fixture()
def count_detections(monkeypatch) -> list[int]:
    """Photos sent to the real detector, per call."""
    calls: list[int] = []
    real = FaceDetector.detect

    def counting(self, images):
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(FaceDetector, "detect", counting)
    return calls


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, sample_photos, sample_orl):
    base = tmp_path_factory.mktemp("prepare")
    build_corpus(base / "raw", sample_photos, sample_orl)
    report = prepare(base / "raw", base / "out", SETTINGS, device="cpu", workers=1)
    return base, report


def by_path(rows: list[ManifestRow]) -> dict[str, ManifestRow]:
    return {r.path: r for r in rows}


def test_every_file_gets_its_status_and_reason(first_run):
    base, report = first_run
    rows = by_path(read_manifest(base / "out"))
    assert sorted(rows) == sorted(EXPECTED)
    for path, (status, words) in EXPECTED.items():
        row = rows[path]
        assert (row.status, path) == (status, path), row.reason
        assert row.status in STATUSES
        assert words in row.reason, (path, row.reason)
        assert (row.reason == "") == (status == "ok" and row.n_faces == 1), (path, row.reason)
    assert rows["odd/two_faces.jpg"].n_faces >= 2 and rows["odd/two_faces.jpg"].multi_face
    settled = ("duplicate", "conflict", "no_identity")
    assert report.detected == sum(s not in settled for s, _ in EXPECTED.values())


def test_ok_rows_have_face_and_square_rgb_crop(first_run):
    base, report = first_run
    ok_photos = Counter(r.identity for r in report.rows if r.status == "ok")
    for row in report.rows:
        if row.status != "ok":
            assert row.crop is None and row.split is None
            continue
        assert row.crop == crop_path(row.identity, row.sha256)
        assert len(row.box) == 4 and len(row.landmarks) == 5 and 0.5 < row.prob <= 1
        with Image.open(base / "out" / row.crop) as crop:
            assert crop.mode == "RGB" and crop.size == (112, 112)
        # one ok photo cannot teach a classifier: that person is a stranger (held out), not trained on
        assert row.split == "holdout" if ok_photos[row.identity] == 1 else row.split in ("train", "val", "test")
    assert report.strangers == sorted(i for i, n in ok_photos.items() if n == 1) != []
    settings = read_settings(base / "out")
    assert settings["size"] == 112 and settings["select"] == "largest" and settings["seed"] == 0


def test_rotated_photo_box_is_in_upright_pixels(first_run):
    _, report = first_run
    rows = by_path(report.rows)
    upright, rotated = rows["07203/a.jpg"], rows["odd/rotated.jpg"]
    assert np.allclose(upright.box, rotated.box, atol=6)


def test_second_run_detects_nothing_and_changes_are_picked_up(first_run, tmp_path, count_detections):
    base, first = first_run
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(base / "raw", raw)
    shutil.copytree(base / "out", out)
    again = prepare(raw, out, SETTINGS, device="cpu", workers=1)
    assert count_detections == [] and again.detected == 0
    assert [(r.path, r.status, r.crop, r.split) for r in again.rows] == [
        (r.path, r.status, r.crop, r.split) for r in first.rows
    ]
    # Changed in place, added, removed.
    shutil.copy(raw / "07203/a.jpg", raw / "07201/a.jpg")  # now also a conflict with 07203/a.jpg
    Image.open(raw / "07201/b.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(raw / "07201/new.jpg")
    old_b_crop = out / by_path(again.rows)["07201/b.jpg"].crop
    (raw / "07201/b.jpg").unlink()
    third = prepare(raw, out, SETTINGS, device="cpu", workers=1)
    rows = by_path(third.rows)
    assert sum(count_detections) == third.detected == 1  # only new.jpg; b_copy.jpg reuses b.jpg's result
    assert rows["07201/a.jpg"].status == rows["07203/a.jpg"].status == "conflict"
    assert rows["07201/new.jpg"].status == "ok" and "07201/b.jpg" not in rows
    assert rows["07201/b_copy.jpg"].status == "ok" and old_b_crop.is_file()
    assert not (out / by_path(first.rows)["07201/a.jpg"].crop).exists()  # stale crop removed


def test_changing_crop_settings_recrops_without_detecting(first_run, tmp_path, count_detections):
    base, first = first_run
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    report = prepare(base / "raw", out, PrepareSettings(**{**SETTINGS.__dict__, "size": 48, "align": True}),
                     device="cpu", workers=1)
    assert count_detections == [] and report.recropped == sum(r.status == "ok" for r in first.rows)
    for row in report.rows:
        if row.status == "ok":
            with Image.open(out / row.crop) as crop:
                assert crop.size == (48, 48)
    assert read_settings(out)["size"] == 48


def test_changing_select_redoes_detection(first_run, tmp_path, count_detections):
    base, first = first_run
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    report = prepare(base / "raw", out, PrepareSettings(**{**SETTINGS.__dict__, "select": "center"}),
                     device="cpu", workers=1)
    searched = sum(r.status in ("ok", "no_face") for r in first.rows)
    assert report.detected == first.detected and sum(count_detections) == searched


def test_identity_folders_cannot_escape_out_dir():
    assert safe_folder("..") == "_"
    assert safe_folder("a/../b") == "a/_/b"
    assert safe_folder(".hidden") == "_hidden"
    assert safe_folder('Ann "A" Smith') == "Ann _A_ Smith"
    assert ".." not in crop_path("../../etc", "ab" * 32).split("/")


def _ok(identity: str, sha: str) -> ManifestRow:
    return ManifestRow(f"{identity}/{sha}.jpg", identity, sha, 1, 1, "ok", "")


def test_splits_are_stable_and_respect_min_photos_and_holdout():
    rows = [_ok(f"p{i}", f"{i:02d}{j:062d}") for i in range(6) for j in range(10)] + [_ok("few", "f" * 64),
                                                                                       _ok("few", "e" * 64)]
    settings = PrepareSettings(min_photos=3, holdout_identities=2, val=0.2, test=0.2, seed=1)
    train_only, holdout, strangers = assign_splits(rows, settings)
    assert train_only == ["few"] and len(holdout) == 2 and "few" not in holdout and strangers == []
    splits = {r.sha256: r.split for r in rows}
    assert {r.split for r in rows if r.identity in holdout} == {"holdout"}
    assert set(splits.values()) == {"train", "val", "test", "holdout"}
    # Adding photos never moves the others.
    more = rows + [_ok("p0", f"99{j:062d}") for j in range(5)]
    assign_splits(more, settings)
    assert all(splits[r.sha256] == r.split for r in more if r.sha256 in splits)
    assign_splits(rows, PrepareSettings(**{**settings.__dict__, "seed": 2}))
    assert [r.split for r in rows] != [splits[r.sha256] for r in rows]


def test_one_photo_identities_are_held_out_as_strangers():
    rows = [_ok("many", f"{j:064d}") for j in range(6)] + [_ok("two", "a" * 64), _ok("two", "b" * 64),
                                                           _ok("single", "c" * 64)]
    train_only, holdout, strangers = assign_splits(rows, PrepareSettings(min_photos=5))
    assert strangers == ["single"] and train_only == ["two"] and holdout == []
    split = {r.identity: r.split for r in rows}
    assert split["single"] == "holdout" and split["two"] == "train"
    assign_splits(rows, PrepareSettings(min_photos=5, min_train_photos=1))  # opt out: one photo trains
    assert {r.identity: r.split for r in rows}["single"] == "train"


def test_several_raw_folders_merge_identities_and_keep_twin_photos_out_of_evaluation(tmp_path, sample_photos):
    """Two folders (say uncropped and aligned copies): one person across both, paths labelled by folder, the
    same photo under both names trains, never validates; originals are found again through dataset.json."""
    photos = sorted(sample_photos.glob("07201/*.jpg"))[:8]
    wild, aligned = tmp_path / "wild", tmp_path / "aligned"
    for i, photo in enumerate(photos[:6]):
        (wild / "07201").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, wild / "07201" / f"{i:06d}.jpg")
    (aligned / "07201").mkdir(parents=True)
    with Image.open(photos[0]) as im:  # the same photo as wild/07201/000000.jpg, other bytes (re-encoded)
        im.convert("RGB").save(aligned / "07201" / "000000.jpg", quality=70)
    shutil.copy(photos[6], aligned / "07201" / "000100.jpg")
    settings = PrepareSettings(min_photos=2, val=0.45, test=0.45)
    report = prepare([wild, aligned], tmp_path / "out", settings, device="cpu", workers=1)
    rows = {r.path: r for r in report.rows}
    assert set(rows) == {f"wild/07201/{i:06d}.jpg" for i in range(6)} | {"aligned/07201/000000.jpg",
                                                                         "aligned/07201/000100.jpg"}
    assert {r.identity for r in rows.values()} == {"07201"} and all(r.status == "ok" for r in rows.values())
    assert rows["wild/07201/000000.jpg"].split == rows["aligned/07201/000000.jpg"].split == "train"
    assert {r.split for r in rows.values()} > {"train"}  # the others are still split as usual
    recorded = read_settings(tmp_path / "out")
    assert prep.raw_source(recorded, "aligned/07201/000100.jpg") == (aligned / "07201" / "000100.jpg").resolve()
    assert prep.raw_source(recorded, "elsewhere/x.jpg") is None
    again = prepare([wild, aligned], tmp_path / "out", settings, device="cpu", workers=1)
    assert again.detected == 0 and again.reused == 8
    (tmp_path / "other" / "wild").mkdir(parents=True)
    with pytest.raises(ValueError, match="distinct names"):
        prepare([wild, tmp_path / "other" / "wild"], tmp_path / "out2", settings)


def test_linked_person_folders_are_followed_inside_the_input_and_refused_with_a_row_outside(tmp_path, sample_photos):
    photo = sorted(sample_photos.glob("07201/*.jpg"))[0]
    raw, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    (raw / "ann").mkdir(parents=True)
    shutil.copy(photo, raw / "ann" / "a.jpg")
    (raw / "archive" / "bob").mkdir(parents=True)
    shutil.copy(photo, raw / "archive" / "bob" / "b.jpg")
    (elsewhere / "eve").mkdir(parents=True)
    shutil.copy(photo, elsewhere / "eve" / "e.jpg")
    (raw / "bob").symlink_to(raw / "archive" / "bob")  # inside the input: followed
    (raw / "eve").symlink_to(elsewhere / "eve")  # outside: one refused row, nothing read from there
    (raw / "ann" / "loop").symlink_to(raw / "ann")  # a loop: refused, scanned once
    report = prepare(raw, tmp_path / "out", PrepareSettings(min_photos=1), device="cpu", workers=1)
    rows = {r.path: r for r in report.rows}
    assert rows["bob/b.jpg"].identity == "bob" and "archive/bob/b.jpg" in rows
    assert rows["eve"].status == "not_followed" and "outside the input" in rows["eve"].reason
    assert rows["ann/loop"].status == "not_followed" and "scanned already" in rows["ann/loop"].reason
    assert not any(path.startswith("eve/") for path in rows)
    assert {r.path for r in read_manifest(tmp_path / "out")} == set(rows)


def test_cli_json_and_clear_failure(tmp_path, sample_photos):
    from facesearch.cli import app

    raw = tmp_path / "raw" / "07201"
    raw.mkdir(parents=True)
    for photo in sorted(sample_photos.glob("07201/*.jpg"))[:2]:
        shutil.copy(photo, raw)
    (raw / "junk.jpg").write_text("junk")
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", str(tmp_path / "raw"), str(tmp_path / "out"), "--workers", "1",
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"ok": 2, "not_an_image": 1} and summary["detected"] == 3
    table = runner.invoke(app, ["prepare", str(tmp_path / "raw"), str(tmp_path / "out"), "--workers", "1"])
    assert table.exit_code == 0 and "not_an_image" in table.stdout and "0 photos detected" in table.stdout
    missing = runner.invoke(app, ["prepare", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert missing.exit_code == 1 and "nope" in missing.stderr
    same = runner.invoke(app, ["prepare", str(tmp_path / "raw"), str(tmp_path / "raw")])
    assert same.exit_code == 1 and "must differ" in same.stderr


def test_worker_processes_give_the_same_rows(first_run, tmp_path):
    """The two-process path (spawned workers) agrees with the in-process one."""
    base, first = first_run
    report = prepare(base / "raw", tmp_path / "out", SETTINGS, device="cpu", workers=2)
    assert [(r.path, r.status) for r in report.rows] == [(r.path, r.status) for r in first.rows]


@pytest.mark.parametrize("layout, says", [
    ("loose", "holds no person folders"),  # photos straight in RAW_DIR: nobody to label them with
    ("empty", "holds no person folders"),
    ("empty_people", "its person folders (ann, bob) hold no photos"),
])
def test_a_raw_folder_without_photos_in_person_folders_is_refused_and_the_output_kept(tmp_path, sample_photos,
                                                                                      layout, says):
    from builders import make_prepared_faces, run_cli

    raw = tmp_path / "raw"
    raw.mkdir()
    if layout == "loose":
        for photo in sorted(sample_photos.glob("07201/*.jpg"))[:2]:
            shutil.copy(photo, raw)
    if layout == "empty_people":
        (raw / "ann").mkdir()
        (raw / "bob").mkdir()
    out = make_prepared_faces(tmp_path / "out", n_ids=2, per_id=2)  # an earlier output: its crops must survive
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_cli("prepare", raw, out, "--workers", "1", "--device", "cpu", ok=False)
    assert result.exit_code == 1 and str(raw) in result.stderr and says in result.stderr, result.output
    assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("option, value", [
    ("--size", "0"), ("--size", "-5"), ("--size", "1025"), ("--margin", "nan"), ("--margin", "-1"),
    ("--margin", "inf"), ("--workers", "0"), ("--workers", "-1"), ("--min-photos", "-1"),
    ("--min-train-photos", "-1"), ("--holdout-identities", "-1"),
])
def test_cli_out_of_range_options_are_named_before_any_work(tmp_path, sample_photos, option, value):
    from builders import run_cli

    (tmp_path / "raw" / "07201").mkdir(parents=True)
    shutil.copy(sorted(sample_photos.glob("07201/*.jpg"))[0], tmp_path / "raw" / "07201")
    result = run_cli("prepare", tmp_path / "raw", tmp_path / "out", option, value, "--device", "cpu", ok=False)
    assert result.exit_code in (1, 2) and option in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_holding_out_more_people_than_there_are_is_refused(tmp_path, sample_photos):
    """It used to hold everyone out (nothing left to train on) with only a log line."""
    from builders import run_cli

    for person in ("ann", "bob"):
        (tmp_path / "raw" / person).mkdir(parents=True)
        shutil.copy(sorted(sample_photos.glob("07201/*.jpg"))[0 if person == "ann" else 1], tmp_path / "raw" / person)
    result = run_cli("prepare", tmp_path / "raw", tmp_path / "out", "--holdout-identities", "3", "--device", "cpu",
                     ok=False)
    assert result.exit_code == 1 and "--holdout-identities 3" in result.stderr and "2 people" in result.stderr
    assert str(tmp_path / "raw") in result.stderr and not (tmp_path / "out").exists()
