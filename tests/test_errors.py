"""One error hierarchy (``facesearch.errors``): the CLI maps an error to its exit status, the service to its HTTP
status, by its type; a library error about one parameter is spelled as the command's option by the CLI and as
the field by the API; anything else (a plain ValueError from a bug) gets the crash log, not a one-line error."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from facesearch.checkpoint import CheckpointError
from facesearch.cli._app import CommandError, _Root
from facesearch.cluster import ClusterError, ClusterNotFound
from facesearch.data.images import ImageError
from facesearch.errors import (BadInput, Conflict, FacesearchError, MissingFile, ModelMismatch, NotFound,
                               ReadOnly, Remedy, Unavailable)
from facesearch.explain import ExplainError
from facesearch.gallery.vectors.index import IndexFileError
from facesearch.gallery.records import (FaceNotFound, GalleryError, GalleryReadOnly, IdentityNotFound,
                                        ModelMismatchError, NameTaken)
from facesearch.teacher import TeacherUnavailable

# every error type the library raises: (its instance, exit status, HTTP status, the service's status word)
ERRORS = [
    (FacesearchError("refused"), 1, 400, "refused"),
    (BadInput("bad value"), 1, 422, "invalid_request"),
    (NotFound("not there"), 1, 404, "not_found"),
    (MissingFile("data/manifest.csv: no manifest"), 1, 404, "not_found"),
    (Conflict("taken"), 1, 409, "conflict"),
    (ModelMismatch("other model"), 1, 409, "model_mismatch"),
    (ReadOnly("read-only"), 1, 403, "read_only_gallery"),
    (Unavailable("not installed"), 1, 503, "unavailable"),
    (GalleryError("gallery says no"), 1, 400, "refused"),
    (IdentityNotFound("no identity named 'x'"), 1, 404, "not_found"),
    (FaceNotFound("no face with id 3"), 1, 404, "not_found"),
    (NameTaken("an identity named 'x' exists already"), 1, 409, "conflict"),
    (GalleryReadOnly("the gallery is open read-only"), 1, 403, "read_only_gallery"),
    (ModelMismatchError("the gallery holds embeddings of model a"), 1, 409, "model_mismatch"),
    (CheckpointError("x.pt: not a checkpoint"), 1, 422, "invalid_request"),
    (ImageError("unreadable", "truncated file", "a.jpg"), 1, 422, "unreadable"),
    (ClusterError("damaged clusters folder"), 1, 400, "refused"),
    (ClusterNotFound("no group 7"), 1, 404, "not_found"),
    (ExplainError("no face found"), 1, 422, "cannot_explain"),
    (IndexFileError("index.faiss: checksum mismatch"), 1, 503, "unavailable"),
    (TeacherUnavailable("install the teacher extra"), 1, 503, "unavailable"),
    (CommandError("usage", code=2), 2, 400, "refused"),
]


def _cli(raising: BaseException) -> typer.Typer:
    """A CLI with the real root group and one command that raises ``raising``."""
    app = typer.Typer(cls=_Root, add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def go(conv_width: float = 1.0, photos: list[str] = typer.Argument(None),
           as_json: bool = typer.Option(False, "--json")) -> None:
        raise raising

    @app.command()
    def other() -> None:  # two commands: `go` is a sub-command, as in facesearch
        pass

    return app


@pytest.mark.parametrize("error, exit_code, http_status, status", ERRORS, ids=lambda v: type(v).__name__)
def test_the_cli_exits_with_the_status_of_the_errors_type(error, exit_code, http_status, status):
    result = CliRunner().invoke(_cli(error), ["go", "--json"])
    assert result.exit_code == exit_code, result.output
    assert f"error: {error}" in result.stderr and "unexpected" not in result.output
    assert json.loads(result.stdout)["error"] == {"message": str(error), "exit_code": exit_code}


def test_the_cli_spells_the_parameter_an_error_is_about_as_the_commands_option():
    result = CliRunner().invoke(_cli(BadInput("5.0: in (0, 4]", param="conv_width")), ["go", "--conv-width", "5"])
    assert result.exit_code == 1 and "error: --conv-width 5.0: in (0, 4]" in result.stderr, result.output
    argument = CliRunner().invoke(_cli(BadInput("none given", param="photos")), ["go"])
    assert "error: PHOTOS none given" in argument.stderr, argument.output
    unknown = CliRunner().invoke(_cli(BadInput("3: too many", param="top_k")), ["go"])  # not an option of `go`
    assert "error: top_k 3: too many" in unknown.stderr, unknown.output


def test_a_library_message_names_the_parameter_not_a_flag():
    from facesearch.models.vgg import VGGConfig

    with pytest.raises(BadInput) as caught:
        VGGConfig(num_classes=3, conv_width=5.0)
    assert caught.value.param == "conv_width" and str(caught.value).startswith("conv_width 5.0: in (0, 4]")
    assert "--" not in str(caught.value)


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast together with shapes (3,) (4,)"),
                                 KeyError("fingerprint")])
def test_a_plain_value_or_key_error_is_a_bug_with_a_crash_log_not_a_user_error(bug, tmp_path):
    result = CliRunner().invoke(_cli(bug), ["go"], env={"XDG_STATE_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert f"unexpected {type(bug).__name__}" in result.stderr and "rerun with `facesearch --debug" in result.stderr
    logs = list((tmp_path / "facesearch").glob("facesearch-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr and "Traceback" in logs[0].read_text()


# -- the service ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raising_client():
    """The service's real application and error handlers, over a stand-in service, with one route that raises
    the error named in its path."""
    from fastapi.testclient import TestClient

    from facesearch.serve.app import create_app
    from facesearch.serve.service import Limits

    service = SimpleNamespace(limits=Limits(), public=lambda text: text.replace("/srv/gallery", "GALLERY"))
    app = create_app(service)
    errors = {str(i): error for i, (error, *_) in enumerate(ERRORS)}
    errors["bug"] = ValueError("a bug: shapes (3,) and (4,)")

    @app.get("/raise/{which}")
    def raise_it(which: str):
        raise errors[which]

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("which", range(len(ERRORS)), ids=[type(e[0]).__name__ for e in ERRORS])
def test_the_service_answers_with_the_status_of_the_errors_type(raising_client, which):
    error, _, http_status, status = ERRORS[which]
    r = raising_client.get(f"/raise/{which}", headers={"Accept": "application/json"})
    assert r.status_code == http_status and r.json()["error"] == {"status": status, "reason": str(error)}, r.text


def test_the_service_names_the_field_and_keeps_its_paths_to_itself(raising_client):
    from facesearch.serve.app import ListenError

    assert str(BadInput("11: at most 10", param="top_k")) == "top_k 11: at most 10"  # the API's spelling
    assert "--" not in str(ListenError("8000 on ::1 is in use", param="port"))
    app = raising_client.app

    @app.get("/raise-path")
    def raise_path():
        raise GalleryError("/srv/gallery: not a gallery")

    r = raising_client.get("/raise-path")
    assert r.status_code == 400 and r.json()["error"]["reason"] == "GALLERY: not a gallery"


def test_a_bug_in_the_service_is_a_500_without_its_message(raising_client):
    r = raising_client.get("/raise/bug")
    assert r.status_code == 500 and r.json()["error"]["status"] == "internal_error"
    assert "shapes" not in r.text and "ValueError" in r.text


# -- remedies: what to do, in the library's terms; each front end spells them ----------------------------------


def _remedied() -> BadInput:
    return BadInput("the gallery holds embeddings of model a", remedy=(Remedy.run("reembed", checkpoint="NEW"),
                                                                        Remedy.give("url")))


def test_a_remedy_is_said_in_the_librarys_terms():
    assert str(_remedied()) == "the gallery holds embeddings of model a (reembed: checkpoint=NEW or url)"
    assert str(BadInput("no split", remedy=Remedy.run("prepare"))) == "no split (prepare)"
    assert str(BadInput("too wide", remedy=Remedy.give(fc7_width=512))) == "too wide (fc7_width=512)"


def test_the_cli_spells_a_remedy_as_a_command_line_or_the_commands_option():
    result = CliRunner().invoke(_cli(BadInput("too wide", remedy=Remedy.give(conv_width=2))), ["go", "--json"])
    assert "error: too wide (--conv-width 2)" in result.stderr, result.output
    assert json.loads(result.stdout)["error"]["message"] == "too wide (--conv-width 2)"

    import typer.main

    from facesearch.cli import app  # the real commands: their options, arguments and environment variables
    from facesearch.cli._app import user_message
    from facesearch.cli.spelling import command_of, flag_speller, remedy_speller

    root = typer.main.get_command(app)
    who = command_of(root, ["who", "photo.jpg"])
    spell = remedy_speller(root, who)
    assert spell(Remedy.give("url")) == "--db or $FACESEARCH_DB"  # the library's url is the commands' --db
    assert spell(Remedy.give("overwrite")) == "--overwrite"
    assert spell(Remedy.run("enroll", items="PHOTOS", folder="FOLDER")) == "`facesearch enroll PHOTOS --gallery FOLDER`"
    assert spell(Remedy.run("prepare", raw_dir="RAW_DIR", out_dir="OUT")) == "`facesearch prepare RAW_DIR OUT`"
    assert spell(Remedy.run("cluster", photos="PHOTOS", out="c")) == "`facesearch cluster PHOTOS --out c`"
    assert spell(Remedy.run("prepare", align=True, margin=0.2)) == "`facesearch prepare --align --margin 0.2`"
    assert spell(Remedy.run("prepare", align=False, margin=0.2)) == "`facesearch prepare --no-align --margin 0.2`"
    train = command_of(root, ["train", "data"])
    message, code = user_message(BadInput("too wide", remedy=(Remedy.give(fc7_width=8), Remedy.give(projection=8))),
                                 flag_speller(train), remedy_speller(root, train))
    assert (message, code) == ("too wide (--fc7-width 8 or --projection 8)", 1)
    assert user_message(_remedied(), flag_speller(who), remedy_speller(root, who))[0] == (
        "the gallery holds embeddings of model a (`facesearch gallery reembed --checkpoint NEW` or --db or "
        "$FACESEARCH_DB)")


def test_every_library_action_has_a_command_and_the_service_a_spelling():
    from typing import get_args

    import typer.main

    from facesearch.cli import app
    from facesearch.cli.spelling import ACTIONS, command_of
    from facesearch.errors import Action
    from facesearch.serve.remedies import spell

    assert set(ACTIONS) == set(get_args(Action))
    root = typer.main.get_command(app)
    for action, words in ACTIONS.items():
        assert command_of(root, list(words)).name == words[-1], action
        assert "facesearch" not in spell(Remedy.run(action)), action


def test_the_service_spells_a_remedy_as_its_endpoint_and_adds_it_to_the_json(raising_client):
    app = raising_client.app

    @app.get("/raise-remedy")
    def raise_remedy():
        raise GalleryError("subject 'a': no face found", remedy=(Remedy.run("check"), Remedy.run("reembed")))

    from facesearch.serve.remedies import reason

    assert reason(ValueError("choose it from the list")) == "choose it from the list"  # the pages' own refusals
    r = raising_client.get("/raise-remedy")
    assert r.status_code == 400 and r.json()["error"] == {
        "status": "refused",
        "reason": "subject 'a': no face found (GET /api/v1/gallery/check or the gallery's administrator: reembed)",
        "remedy": [{"action": "check", "args": {}}, {"action": "reembed", "args": {}}]}


# -- library messages name no CLI flag and no `facesearch` command ------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "facesearch"


def _cli_words() -> re.Pattern:
    """A flag (``--db``, ``-g FOLDER``) or a ``facesearch`` command (``facesearch gallery``) in a message."""
    import typer.main

    from facesearch.cli import app

    commands = "|".join(sorted(typer.main.get_command(app).commands, key=len, reverse=True))
    return re.compile(rf"--[a-z][a-z0-9-]+|(?<![\w-])-[a-z] [A-Z]{{2,}}|\bfacesearch (?:{commands})\b")


def _text(node: ast.AST) -> str | None:
    """A string literal's text (an f-string's literal parts, ``{}`` for each value)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def cli_words_in_messages(source: str, pattern: re.Pattern) -> list[tuple[int, str]]:
    """(line, text) of each string literal of ``source`` that names a CLI flag or a ``facesearch`` command, but
    its docstrings (which may name the command a function backs): every other string may reach a user, raised,
    logged, returned or kept for a message later."""
    tree = ast.parse(source)
    skip = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # read whole
    skip |= {id(n.body[0].value) for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
             and n.body and isinstance(n.body[0], ast.Expr)}
    return sorted({(n.lineno, text) for n in ast.walk(tree)
                   if id(n) not in skip and (text := _text(n)) is not None and pattern.search(text)})


def test_the_checker_finds_cli_words_in_messages_and_not_in_docstrings():
    source = '''
def f(x):
    """Backs `facesearch gallery check`; --db is the CLI's."""
    if x:
        raise GalleryError(f"{x}: run `facesearch gallery check` first")
    logger.warning("give --db")
    hint = "x -g FOLDER"
    return f"{x} exists: give --overwrite" + hint
'''
    assert [line for line, _ in cli_words_in_messages(source, _cli_words())] == [5, 6, 7, 8]


def test_library_messages_name_no_cli_flag_or_facesearch_command():
    """The library says what is wrong in its own terms; what to do is a ``Remedy`` that the CLI spells as its flags
    and commands (``facesearch.cli.spelling``) and the service as its endpoints. Only the CLI's modules may."""
    pattern = _cli_words()
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts[:1]
             for line, text in cli_words_in_messages(path.read_text(), pattern)]
    assert not found, "\n".join(found)
