"""The CLI's one error path: every expected failure is a short message naming the file or value, a non-zero exit
status and, with --json, a JSON error on stdout; a bug is a short message naming the log that holds its traceback."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from builders import fed_after, run_cli, tiny_checkpoint


def run(*args, ok=False, env=None):  # these tests look at failures: no exit-status assertion by default
    return run_cli(*args, ok=ok, env=env)


def json_error(result) -> dict:
    return json.loads(result.stdout)["error"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _checkpoints(folder: Path) -> dict[str, Path]:
    """One file per way a checkpoint can be unusable."""
    from facesearch.checkpoint import fingerprint

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
    shapes = {**payload["model"], name: torch.zeros(1, 1, 1, 1)}  # saved so (its fingerprint is its weights')
    torch.save({**payload, "model": shapes, "fingerprint": fingerprint(shapes)}, made["shapes"])
    made["missing"] = folder / "missing.pt"
    made["photo"] = folder / "photo.pt"  # a file of another kind given as a checkpoint
    made["photo"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    made["cifar"] = folder / "cifar.pt"  # `facesearch cifar10 train` wrote it: it classifies 32 px objects
    torch.save({**payload, "dataset": {"kind": "cifar10", "root": "cifar-10-batches-py"}}, made["cifar"])
    made["forged"] = folder / "forged.pt"  # other weights passed off as the good model by its recorded fingerprint
    torch.save({**payload, "model": _other_weights(payload["model"])}, made["forged"])
    return made


def _other_weights(state: dict) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=generator).to(v.dtype) if v.is_floating_point() else v
            for k, v in state.items()}


@pytest.mark.parametrize("kind, says", [
    ("truncated", "damaged or truncated"),
    ("unsafe", "refused"),
    ("foreign", "not a facesearch checkpoint"),
    ("architecture", "architecture is not one"),
    ("shapes", "weights do not fit"),
    ("missing", "no such checkpoint"),
    ("photo", "not a checkpoint"),
    ("cifar", "a CIFAR-10 image classifier, not a face model"),
    ("forged", "its weights do not match its recorded fingerprint"),
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
        allowed = (0, 1) if args[:2] == ["gallery", "check"] else (0,)  # check reports the missing index: exit 1
        assert result.exit_code in allowed and "error" not in result.stderr.lower(), (args, result.output)
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
    assert result.exit_code == 1 and "holds identity folders" in result.stderr
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
    (["calibrate", "{photos}", "--fpir", "nan"], "'--fpir': nan is not a finite number"),
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
    for option, value, code in (("--lr", "nan", 2), ("--dropout", "1.5", 1), ("--weight-decay", "-1", 1)):
        result = run("train", data, "--out", tmp_path / "run", option, value, "--device", "cpu", "--epochs", "1")
        assert result.exit_code == code and value in result.output, result.output


def _float_options() -> list[tuple[list[str], str]]:
    """(command words, option) for every float option of every command."""
    import typer

    from facesearch.cli import app

    found = []

    def walk(command, words):
        for param in command.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if annotation is float or getattr(getattr(param, "type", None), "name", None) == "float":
                found.append((words, param.opts[0]))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_float_option_refuses_nan_and_infinity_as_a_usage_error():
    options = _float_options()
    assert (["who"], "--threshold") in options and (["train"], "--lr") in options and len(options) > 20
    for words, option in options:
        for value in ("nan", "inf", "-inf"):
            result = run(*words, option, value)
            assert result.exit_code == 2 and option in result.output, (words, option, value, result.output)
            assert "Traceback" not in result.output
    as_json = run("who", "x.jpg", "--threshold", "nan", "--json")
    assert as_json.exit_code == 2 and "not a finite number" in json_error(as_json)["message"]


@pytest.mark.parametrize("value", ["verbose", "LOUD", "5"])
def test_an_unknown_log_level_is_named_with_the_allowed_ones(tmp_path, monkeypatch, capsys, value):
    import sys

    from facesearch.cli import main

    monkeypatch.setenv("FACESEARCH_LOG", value)
    monkeypatch.setattr(sys, "argv", ["facesearch", "identities", "list", "-g", str(tmp_path / "g")])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert f"FACESEARCH_LOG={value!r}" in err and "debug, info, warning, error, critical" in err


@pytest.mark.parametrize("value, level", [("", "WARNING"), (" ", "WARNING"), ("info", "INFO"), ("DEBUG", "DEBUG")])
def test_an_empty_or_known_log_level_runs(monkeypatch, capsys, value, level):
    import logging
    import sys

    from facesearch.cli import main

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest's own handlers put back after)
    monkeypatch.setenv("FACESEARCH_LOG", value)
    monkeypatch.setattr(sys, "argv", ["facesearch", "cifar10", "--help"])  # past the app's callback, nothing run
    old_level = root.level
    try:
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 0, capsys.readouterr()
        assert logging.getLevelName(root.level) == level and len(root.handlers) == 1
    finally:
        root.setLevel(old_level)


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


# -- models that are not the gallery's face model --------------------------------------------------------------


def test_a_cifar_model_or_forged_weights_are_refused_by_enroll_and_who(enrolled, tmp_path):
    from facesearch.gallery import Gallery

    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    with Gallery(copy, create=False) as g:
        model = Path(g.model_source)
    made = _checkpoints(tmp_path)
    payload = torch.load(model, weights_only=True)  # the gallery's model's fingerprint, carried by other weights
    torch.save({**payload, "model": _other_weights(payload["model"])}, tmp_path / "impostor.pt")
    before = _files(copy)
    for checkpoint, says in ((made["cifar"], "CIFAR-10"), (tmp_path / "impostor.pt", "damaged or altered")):
        for args in (["who", probe], ["enroll", probe, "--name", "someone", "--largest"]):
            result = run(*args, "-g", copy, "-c", checkpoint, "--device", "cpu")
            assert result.exit_code == 1 and says in result.stderr and checkpoint.name in result.stderr, result.output
    assert _files(copy) == before


# -- photos that are not photo files, unreadable photos, names that are not text ----------------------------------


def test_a_named_pipe_given_as_a_photo_is_refused_without_waiting_for_a_writer(enrolled, tmp_path):
    import time

    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for args in (["enroll", fifo, "--name", "someone"], ["who", fifo], ["embed", fifo, "-o", tmp_path / "e.npy"]):
        timer = fed_after(fifo, 10)
        started = time.monotonic()
        result = run(*args, "-g" if args[0] != "embed" else "--device", copy if args[0] != "embed" else "cpu",
                     *(["--device", "cpu"] if args[0] != "embed" else []))
        timer.cancel()
        assert time.monotonic() - started < 10, args  # it used to wait forever
        assert result.exit_code == 1 and f"{fifo}: unreadable: a named pipe (FIFO)" in result.output, (args, result.output)


def test_an_unreadable_photo_is_reported_and_the_others_answered(enrolled, tmp_path, monkeypatch):
    import errno
    import shutil

    gallery, probe = enrolled
    locked = shutil.copy(probe, tmp_path / "locked.jpg")
    real_access, real_open = os.access, os.open

    def access(path, mode, **kwargs):  # what chmod 000 looks like to anyone but root
        return False if mode & os.R_OK and str(path) == str(locked) else real_access(path, mode, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", os_open)
    result = run("who", probe, locked, "-g", gallery, "--device", "cpu")
    assert result.exit_code == 2, result.output  # not a usage error: the run went on and says what failed
    assert f"{probe}\t1 face" in result.stdout
    assert f"{locked}: unreadable: cannot read the file: Permission denied" in result.stdout
    assert "1 of 2 photos could not be read" in result.stderr
    lines = [json.loads(line) for line in run("who", locked, probe, "-g", gallery, "--device", "cpu",
                                              "--json").stdout.splitlines()]
    assert lines[0]["error"]["status"] == "unreadable" and lines[1]["faces"]
    embedded = run("embed", locked, probe, "-o", tmp_path / "e.npy", "--device", "cpu", "-c", _model_of(gallery))
    assert embedded.exit_code == 2 and f"{locked}: unreadable" in embedded.stderr


def _model_of(gallery: Path) -> Path:
    from facesearch.gallery import Gallery

    with Gallery(gallery, create=False) as g:
        return Path(g.model_source)


def test_file_and_person_names_cannot_forge_lines_or_drive_the_terminal(enrolled, tmp_path):
    import shutil

    gallery, probe = enrolled
    copy = _copy(gallery, tmp_path / "g")
    hostile = "evil\nforged.jpg: enrolled\x1b]0;owned\x07\u202egpj.jpg"
    people = tmp_path / "people"
    (people / "ann").mkdir(parents=True)
    photo = Path(shutil.copy(probe, people / "ann" / hostile))
    (people / "ann" / f"{hostile}.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(40))
    shown = "evil\\nforged.jpg: enrolled\\x1b]0;owned\\x07\\u202egpj.jpg"
    outputs = [
        run("enroll", people, "-g", copy, "--device", "cpu", "--largest"),
        run("who", photo, tmp_path / f"{hostile}.missing.jpg", "-g", copy, "--device", "cpu"),
        run("who", photo, "-g", copy, "--device", "cpu"),
        run("who", tmp_path / hostile, "-g", copy, "--device", "cpu"),  # a missing file: the error line
        run("embed", people, "-o", tmp_path / "e.npy", "--device", "cpu", "-c", _model_of(gallery)),
    ]
    for result in outputs:
        assert shown in result.output, result.output
        assert not any(c in result.output for c in "\x1b\x07\u202e"), result.output
        assert not any(line.startswith("forged.jpg") for line in result.output.splitlines()), result.output
    assert json.loads(run("who", photo, "-g", copy, "--device", "cpu", "--json").stdout)["photo"] == str(photo)
