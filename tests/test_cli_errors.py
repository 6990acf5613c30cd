"""The CLI's one error path: every expected failure is a short message naming the file or value, a non-zero exit
status and, with --json, a JSON error on stdout; a bug is a short message naming the log that holds its traceback."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gallery_support import tiny_checkpoint

NO_ENV = {"FACESEARCH_CHECKPOINT": None, "FACESEARCH_GALLERY": None, "FACESEARCH_DB": None, "FACESEARCH_LOG": None}


def run(*args, env=None):
    from facesearch.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={**NO_ENV, **(env or {})})


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
    return made


@pytest.mark.parametrize("kind, says", [
    ("truncated", "damaged or truncated"),
    ("unsafe", "refused"),
    ("foreign", "not a facesearch checkpoint"),
    ("architecture", "architecture is not one"),
    ("shapes", "weights do not fit"),
    ("missing", "no such checkpoint"),
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


def test_who_of_a_folder_says_it_is_a_folder(tmp_path):
    result = run("who", tmp_path, "-g", tmp_path / "g")
    assert result.exit_code == 1 and "a folder" in result.stderr


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
