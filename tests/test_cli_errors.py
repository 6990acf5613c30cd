"""The CLI's one error path: every expected failure is a short message naming the file or value, a non-zero exit
status and, with --json, a JSON error on stdout; a bug is a short message naming the log that holds its traceback."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from builders import run_cli, tiny_checkpoint


def run(*args, ok=False, env=None):  # these tests look at failures: no exit-status assertion by default
    return run_cli(*args, ok=ok, env=env)


def json_error(result) -> dict:
    return json.loads(result.stdout)["error"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _checkpoints(folder: Path) -> dict[str, Path]:
    """One file per way a checkpoint can be unusable."""
    good = tiny_checkpoint(folder / "good.pt")
    payload = torch.load(good, weights_only=True)
    made = {}
    made["truncated"] = folder / "truncated.pt"
    made["truncated"].write_bytes(good.read_bytes()[:2000])
    made["unsafe"] = folder / "unsafe.pt"
    made["unsafe"].write_bytes(pickle.dumps(_RunsCode()))
    made["foreign"] = folder / "foreign.pt"
    torch.save({"state_dict": payload["model"]}, made["foreign"])
    made["architecture"] = folder / "architecture.pt"
    torch.save({**payload, "model_config": {**payload["model_config"], "wings": 2}}, made["architecture"])
    made["shapes"] = folder / "shapes.pt"
    name = next(k for k, v in payload["model"].items() if v.ndim == 4)
    torch.save({**payload, "model": {**payload["model"], name: torch.zeros(1, 1, 1, 1)}}, made["shapes"])
    made["missing"] = folder / "missing.pt"
    made["photo"] = folder / "photo.pt"  # a file of another kind given as a checkpoint
    made["photo"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    return made


@pytest.mark.parametrize("kind, says", [
    ("truncated", "damaged or truncated"),
    ("unsafe", "refused"),
    ("foreign", "not a facesearch checkpoint"),
    ("architecture", "architecture is not one"),
    ("shapes", "weights do not fit"),
    ("missing", "no such checkpoint"),
    ("photo", "not a checkpoint"),
])
def test_each_unusable_checkpoint_has_its_own_message(tmp_path, sample_photos, kind, says):
    path = _checkpoints(tmp_path)[kind]
    photo = next(sample_photos.rglob("*.jpg"))
    result = run("embed", photo, "-o", tmp_path / "e.npy", "-c", path, "--device", "cpu")
    assert result.exit_code == 1
    assert says in result.stderr and str(path.name) in result.stderr
    assert "Traceback" not in result.output and "weights_only" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "e.npy").exists()


def test_a_json_command_prints_its_error_as_json(tmp_path, sample_photos):
    photo = next(sample_photos.rglob("*.jpg"))
    result = run("who", photo, "-g", tmp_path / "no-gallery", "--json")
    assert result.exit_code == 1
    error = json_error(result)
    assert error["exit_code"] == 1 and "no-gallery" in error["message"]


def test_a_bad_option_value_under_json_is_a_json_error_with_exit_status_2(tmp_path):
    result = run("who", tmp_path / "x.jpg", "--top-k", "many", "--json")
    assert result.exit_code == 2
    assert "--top-k" in json_error(result)["message"]


def test_who_of_a_missing_photo_names_it(tmp_path):
    result = run("who", tmp_path / "nope.jpg", "-g", tmp_path / "g")
    assert result.exit_code == 1 and "nope.jpg: no such file" in result.stderr


def test_an_unexpected_error_is_one_line_naming_the_log_with_its_traceback(tmp_path, monkeypatch):
    import facesearch.gallery

    def broken(*_args, **_kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(facesearch.gallery, "Gallery", broken)
    result = run("identities", "list", "-g", tmp_path, "--json", env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "something inside broke" in result.stderr
    logs = list((tmp_path / "state" / "facesearch").glob("facesearch-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    assert "Traceback" in logs[0].read_text() and "something inside broke" in logs[0].read_text()
    assert "something inside broke" in json_error(result)["message"]

    debug = run("--debug", "identities", "list", "-g", tmp_path)
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the traceback through


# -- galleries one may not write, and damaged ones -----------------------------------------------------------


@pytest.fixture(scope="module")
def enrolled(sample_photos, tmp_path_factory):
    """A small gallery (2 people x 2 photos, tiny random-weight model) and a photo to search with."""
    import shutil

    root = tmp_path_factory.mktemp("enrolled")
    people = root / "people"
    for person in sorted(sample_photos.iterdir())[:2]:
        (people / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, people / person.name / photo.name)
    checkpoint = tiny_checkpoint(root / "tiny.pt")
    result = run("enroll", people, "-g", root / "gallery", "-c", checkpoint, "--device", "cpu")
    assert result.exit_code == 0, result.output
    probe = sorted(sorted(sample_photos.iterdir())[0].glob("*.jpg"))[2]
    return root / "gallery", probe


def _copy(gallery: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(gallery, to)
    return to


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_gallery_created_by_enroll_is_private_to_its_owner(enrolled):
    gallery, _ = enrolled
    assert gallery.stat().st_mode & 0o777 == 0o700
    assert (gallery / "gallery.db").stat().st_mode & 0o777 == 0o600
    assert all(d.stat().st_mode & 0o077 == 0 for d in (gallery / "crops").rglob("*") if d.is_dir())
    assert (gallery / "crops").stat().st_mode & 0o777 == 0o700


def test_a_gallery_the_user_may_not_write_is_searched_read_only_and_writes_refuse(enrolled, tmp_path, monkeypatch):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    (copy / "index.faiss").unlink()  # a stale or missing index must not be rewritten either
    before = _files(copy)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(p).startswith(
        str(copy)) else real_access(p, mode, **kw))  # what a read-only mount or another user's gallery looks like
    for args in (["who", probe, "--device", "cpu", "--json"], ["identities", "list"], ["gallery", "stats"],
                 ["gallery", "check"], ["db", "current"]):
        result = run(*args, "-g", copy)
        assert "Traceback" not in result.output, args
        assert result.exit_code in (0, 1) and "error" not in result.stderr.lower() or args[1] == "check", \
            (args, result.output)
    who = json.loads(run("who", probe, "-g", copy, "--device", "cpu", "--json").stdout)
    assert who["faces"] and who["faces"][0]["matches"]
    name = json.loads(run("identities", "list", "-g", copy, "--json").stdout)[0]["name"]
    for args in (["identities", "rename", name, "b"], ["gallery", "rebuild"], ["enroll", probe, "--name", name]):
        result = run(*args, "-g", copy)
        assert result.exit_code == 1 and "read-only" in result.stderr, (args, result.output)
    # SQLite's shared-memory files appear only where the OS lets anyone create them (root here): on a real
    # read-only folder SQLite cannot, and the database is opened immutable instead.
    after = {k: v for k, v in _files(copy).items() if not k.endswith(("-shm", "-wal"))}
    assert after == before


def test_a_damaged_database_is_diagnosed_by_every_command_and_never_written(enrolled, tmp_path):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    db = copy / "gallery.db"
    db.write_bytes(db.read_bytes()[:1000])
    damaged = db.read_bytes()
    for args in (["who", probe, "--device", "cpu"], ["identities", "list"], ["gallery", "check"],
                 ["gallery", "stats"], ["db", "current"], ["enroll", probe, "--name", "x", "--device", "cpu"]):
        result = run(*args, "-g", copy)
        assert result.exit_code == 1, (args, result.output)
        assert "damaged" in result.stderr and "backup" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert db.read_bytes() == damaged


# -- names, enroll's exit status, options ---------------------------------------------------------------------


@pytest.mark.parametrize("name, says", [
    ("", "empty"), ("   ", "empty"), ("a\x07b", "control"), ("a\u200bb", "invisible"), ("x" * 201, "more than the 200"),
])
def test_bad_identity_names_are_refused_before_any_work(enrolled, tmp_path, name, says):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    before = _files(copy)
    result = run("enroll", probe, "--name", name, "-g", copy, "--device", "cpu")
    assert result.exit_code == 1 and says in result.stderr, result.output
    existing = json.loads(run("identities", "list", "-g", copy, "--json").stdout)[0]["name"]
    result = run("identities", "rename", existing, name, "-g", copy)
    assert result.exit_code == 1 and says in result.stderr, result.output
    assert _files(copy) == before


def test_names_are_one_person_whatever_their_unicode_form_or_spaces(enrolled, tmp_path):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    assert run("enroll", probe, "--name", "Zoe\u0308 ", "--largest", "-g", copy, "--device", "cpu").exit_code == 0
    names = [i["name"] for i in json.loads(run("identities", "list", "-g", copy, "--json").stdout)]
    assert "Zo\u00eb" in names and "Zoe\u0308 " not in names
    shown = json.loads(run("identities", "show", " Zoe\u0308", "-g", copy, "--json").stdout)
    assert shown["name"] == "Zo\u00eb" and shown["n_faces"] == 1


def test_merge_into_an_unknown_identity_refuses_unless_asked_to_create_it(enrolled, tmp_path):
    gallery, _ = enrolled
    copy = _copy(gallery, tmp_path / "g")
    first = json.loads(run("identities", "list", "-g", copy, "--json").stdout)[0]
    result = run("identities", "merge", first["name"], "Alcie", "-g", copy)
    assert result.exit_code == 1 and "--create" in result.stderr
    assert "Alcie" not in [i["name"] for i in json.loads(run("identities", "list", "-g", copy, "--json").stdout)]
    assert run("identities", "merge", first["name"], "Alcie", "--create", "-g", copy).exit_code == 0
    moved = json.loads(run("identities", "show", "Alcie", "-g", copy, "--json").stdout)
    assert moved["n_faces"] == first["faces"]


def test_enroll_exit_status_says_whether_every_photo_was_enrolled(enrolled, tmp_path):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    missing, faceless = tmp_path / "missing.jpg", tmp_path / "grey.jpg"
    from PIL import Image

    Image.new("RGB", (200, 200), (128, 128, 128)).save(faceless)
    none = run("enroll", missing, faceless, "--name", "someone", "-g", copy, "--device", "cpu", "--json")
    assert none.exit_code == 1 and json.loads(none.stdout)["failed"] == 2
    some = run("enroll", probe, faceless, "--name", "someone", "--largest", "-g", copy, "--device", "cpu")
    assert some.exit_code == 2 and "1 of 2 photos not enrolled" in some.stderr, some.output
    again = run("enroll", probe, "--name", "someone", "--largest", "-g", copy, "--device", "cpu")
    assert again.exit_code == 0  # already enrolled under that name: nothing to do, nothing failed
    other = run("enroll", probe, "--name", "someone else", "--largest", "-g", copy, "--device", "cpu")
    assert other.exit_code == 1 and "already enrolled as 'someone'" in other.output


def test_enroll_with_a_name_refuses_a_folder_of_person_folders(enrolled, tmp_path, sample_photos):
    gallery, _ = enrolled
    result = run("enroll", sample_photos, "--name", "X", "-g", tmp_path / "g", "--device", "cpu")
    assert result.exit_code == 1 and "holds person folders" in result.stderr
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--top-k", "-1"), ("--threshold", "nan"),
                                           ("--threshold", "1.5"), ("--threshold", "-inf")])
def test_who_refuses_option_values_that_would_give_wrong_answers(enrolled, option, value):
    gallery, probe = enrolled
    result = run("who", probe, "-g", gallery, option, value, "--device", "cpu", "--json")
    assert result.exit_code in (1, 2) and option in json_error(result)["message"], result.output


def test_who_says_where_its_threshold_came_from(enrolled):
    gallery, probe = enrolled
    given = run("who", probe, "-g", gallery, "--threshold", "0.3", "--device", "cpu")
    assert given.exit_code == 0 and "(threshold 0.300, given)" in given.stdout
    default = json.loads(run("who", probe, "-g", gallery, "--device", "cpu", "--json").stdout)
    assert default["threshold_source"] == "default" and not default["threshold_calibrated"]


@pytest.mark.parametrize("args, says", [
    (["calibrate", "{photos}", "--fpir", "1.5"], "--fpir 1.5"),
    (["calibrate", "{photos}", "--fpir", "nan"], "--fpir nan"),
    (["explain", "{probe}", "-o", "{tmp}/x", "--maps", "-3"], "--maps"),
    (["evaluate", "open-set", "{photos}", "--enroll", "0"], "--enroll"),
])
def test_out_of_range_options_are_refused_and_change_nothing(enrolled, tmp_path, sample_photos, args, says):
    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    before = _files(copy)
    filled = [a.format(photos=sample_photos, probe=probe, tmp=tmp_path) for a in args]
    result = run(*filled, "-g", copy, "--device", "cpu") if args[0] != "evaluate" else run(*filled, "--device", "cpu")
    assert result.exit_code in (1, 2) and says in result.output, result.output
    assert "Traceback" not in result.output
    assert _files(copy) == before  # the stored threshold is untouched


def test_training_options_that_are_not_numbers_are_refused(tmp_path):
    from builders import make_prepared_faces

    data = make_prepared_faces(tmp_path / "data", n_ids=3, per_id=4, size=32)
    for option, value in (("--lr", "nan"), ("--dropout", "1.5"), ("--weight-decay", "-1")):
        result = run("train", data, "--out", tmp_path / "run", option, value, "--device", "cpu", "--epochs", "1")
        assert result.exit_code == 1 and value in result.stderr, result.output


def test_a_one_crop_batch_with_fc_batch_norm_is_refused_before_training(tmp_path):
    from builders import make_prepared_faces

    data = make_prepared_faces(tmp_path / "data", n_ids=3, per_id=4, size=32)
    result = run("train", data, "--out", tmp_path / "run", "--fc-batch-norm", "--batch-size", "1",
                 "--conv-width", "0.25", "--fc-width", "16", "--device", "cpu", "--epochs", "1")
    assert result.exit_code == 1 and "--batch-size of at least 2" in result.stderr, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("device, says", [("bogus", "not a device"), ("cuda:7", "CUDA GPU")])
def test_a_device_this_machine_cannot_use_is_named(tmp_path, sample_photos, device, says):
    photo = next(sample_photos.rglob("*.jpg"))
    result = run("embed", photo, "-o", tmp_path / "e.npy", "-c", tiny_checkpoint(tmp_path / "m.pt"), "--device", device)
    assert result.exit_code == 1 and f"device {device!r}" in result.stderr and says in result.stderr
    assert "unexpected" not in result.output and not (tmp_path / "e.npy").exists()


def test_a_smallest_face_larger_than_the_photo_finds_no_face_instead_of_failing(tmp_path, sample_photos):
    from facesearch.gallery import Gallery

    with Gallery(tmp_path / "g"):
        pass
    photos = sorted(sample_photos.rglob("*.jpg"))[:2]
    result = run("who", *photos, "-g", tmp_path / "g", "-c", tiny_checkpoint(tmp_path / "m.pt"), "--device", "cpu",
                 "--min-face", "5000", "--json")
    assert result.exit_code == 0, result.output
    assert [len(json.loads(line)["faces"]) for line in result.stdout.splitlines()] == [0, 0]  # a JSON line a photo


def test_destructive_commands_ask_first_and_refuse_unknown_targets_before_asking(tmp_path):
    from facesearch.gallery import Gallery, NewFace

    with Gallery(tmp_path / "g") as g:
        g.add_faces([NewFace("ann", torch.nn.functional.normalize(torch.ones(8), dim=0).numpy())], "model-a")
    where = ["-g", tmp_path / "g"]
    unasked = run("db", "downgrade", "base", *where)  # no --yes, nobody to answer: nothing is dropped
    assert unasked.exit_code != 0 and "drop every gallery table" in unasked.output
    bogus = run("db", "downgrade", "bogus", *where, "--yes")
    assert bogus.exit_code == 1 and "revision 'bogus'" in bogus.stderr and "unexpected" not in bogus.output
    nobody = run("identities", "remove", "nobody", *where)
    assert nobody.exit_code == 1 and "no identity named 'nobody'" in nobody.output and "?" not in nobody.output
    with Gallery(tmp_path / "g", create=False) as g:
        assert [i.name for i in g.identities()] == ["ann"]


def test_rebuild_refuses_a_pca_wider_than_the_embedding_and_says_when_ivf_starts(tmp_path):
    import numpy as np

    from facesearch.gallery import Gallery, NewFace

    with Gallery(tmp_path / "g") as g:
        g.add_faces([NewFace("ann", np.eye(8, dtype=np.float32)[0])], "model-a")
    wide = run("gallery", "rebuild", "--pca", "600", "-g", tmp_path / "g")
    assert wide.exit_code == 1 and "--pca 600" in wide.stderr and "8 dimensions" in wide.stderr
    ivf = run("gallery", "rebuild", "--index", "ivf", "-g", tmp_path / "g", ok=True)
    assert "flat, 1 faces (exact until the gallery holds 2000 faces: then the ivf index is trained)" in ivf.output


def test_architecture_and_store_values_are_named_and_create_nothing(tmp_path, sample_photos):
    from builders import make_prepared_faces

    data = make_prepared_faces(tmp_path / "data")
    narrow = run("train", data, "--out", tmp_path / "run", "--conv-width", "0", "--device", "cpu")
    assert narrow.exit_code == 1 and "--conv-width 0" in narrow.stderr
    photo = next(sample_photos.rglob("*.jpg"))
    bogus = run("enroll", photo, "--name", "ann", "-g", tmp_path / "g", "--store", "bogus")
    assert bogus.exit_code == 1 and "--store 'bogus'" in bogus.stderr and not (tmp_path / "g").exists()
