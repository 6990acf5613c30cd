"""The web pages of facesearch serve in a real headless Chromium (Playwright driving the system's browser):
log in, the subjects, a subject renamed from its page, a photo uploaded on "who is this" with the drawn names
read back, the explain report and the gallery page. Each page's screenshot is saved under test-artifacts/
(not committed).

Playwright's own browser download is not used: the tests drive ``chromium`` from the system (Debian's package;
``.ci/run`` installs it). Without one they skip and say why, unless FACESEARCH_REQUIRE_BROWSER=1 (CI), where a
missing browser fails the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright.sync_api")

from builders import enrolled_gallery, run_cli, serving  # noqa: E402

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
@pytest.fixture(scope="module")
def server(sample_photos, tmp_path_factory):
    """uvicorn on a free loopback port over a gallery of 3 sample people (tiny random model)."""
    from facesearch.gallery import Gallery
    from facesearch.serve.app import create_app
    from facesearch.serve.service import Service

    root = tmp_path_factory.mktemp("pages")
    checkpoint, photos = enrolled_gallery(root, sample_photos)
    with Gallery(root / "gallery") as g:
        key = g.create_key("browser")
    unlabelled = root / "unlabelled"  # photos of three other people, for the clusters page
    unlabelled.mkdir()
    for person in sorted(p for p in sample_photos.iterdir() if p.is_dir())[3:6]:
        for f in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(f, unlabelled / f"{person.name}-{f.name}")
    run_cli("cluster", unlabelled, "--out", root / "clusters", "-c", checkpoint, "--eps", "0.25", "--min-size", "2")
    service = Service(root / "gallery", checkpoint=checkpoint, clusters=root / "clusters")
    with serving(create_app(service)) as base:
        yield base, key, photos
    service.close()


@pytest.fixture()
def page(chromium, server):
    base, key, _ = server
    context = chromium.new_context(base_url=base, viewport={"width": 1200, "height": 900})
    p = context.new_page()
    p.goto("/subjects")  # no key yet: sent to log in
    assert "/login" in p.url
    p.fill("input[name=key]", "fs_wrong")
    p.click("button[type=submit]")
    assert "not known" in p.inner_text(".error")
    shot(p, "login")
    p.fill("input[name=key]", key)
    p.click("button[type=submit]")
    p.wait_for_url("**/subjects")
    yield p
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert (SHOTS / f"{name}.png").stat().st_size > 1000


def test_subjects_page_lists_everyone_with_a_face(page, server):
    names = sorted(server[2])
    assert page.locator("li.subject .name").all_inner_texts() == names
    thumbs = page.locator("li.subject img")
    assert thumbs.count() == 3
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "subjects")


def test_who_is_this_draws_the_names_of_an_uploaded_photo(page, server):
    name, files = next(iter(server[2].items()))
    page.goto("/who")
    page.set_input_files("#photo", str(files[0]))
    page.wait_for_selector("#status[data-done]")
    assert page.locator("#faces .face-name").all_inner_texts() == [name]
    assert page.locator("#canvas").evaluate("c => c.width") > 0
    assert "1 face" in page.inner_text("#status")
    shot(page, "who")
    stranger = next(iter(server[2].values()))[0].parents[1]  # another sample person, never enrolled
    other = sorted(p for p in stranger.iterdir() if p.is_dir() and p.name not in server[2])[0]
    page.set_input_files("#photo", str(sorted(other.glob("*.jpg"))[0]))
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('%s')"
                           % sorted(other.glob('*.jpg'))[0].name)
    assert len(page.locator("#faces .face-name").all_inner_texts()) >= 1


def test_a_photo_the_browser_cannot_draw_is_still_answered(page, server, tmp_path):
    from PIL import Image

    name, files = next(iter(server[2].items()))
    tiff = tmp_path / "photo.tiff"  # the server reads TIFF; Chromium cannot draw it (the page waited forever)
    Image.open(files[0]).save(tiff)
    page.goto("/who")
    page.set_input_files("#photo", str(tiff))
    page.wait_for_selector("#status[data-done]", timeout=15_000)
    assert page.locator("#faces .face-name").all_inner_texts() == [name]
    assert "cannot show the photo's format" in page.inner_text("#status")
    assert page.locator("#canvas").evaluate("c => c.width") == 0  # no boxes on a photo that is not shown


def test_a_missing_subject_or_page_is_told_as_a_page(page, server):
    for path, words in (("/subjects/Nobody%20Here", "Nobody Here"), ("/no-such-page", "Not Found")):
        response = page.goto(path)
        assert response.status == 404 and "text/html" in response.headers["content-type"], path  # was raw JSON
        assert page.inner_text("h1") == "Not found" and words in page.inner_text("#problem"), path
        assert page.locator("a[href='/subjects']").count() >= 1  # a way on


def test_a_subject_is_renamed_from_its_page(page, server):
    name = sorted(server[2])[-1]
    page.goto(f"/subjects/{name}")
    assert page.inner_text("#subject-name") == name
    assert page.locator("li.face img").count() == 2
    shot(page, "subject")
    page.fill("#rename input[name=new_name]", "Grace Hopper")
    page.click("#rename button")
    page.wait_for_url("**/subjects/Grace%20Hopper*")
    assert page.inner_text("#subject-name") == "Grace Hopper"
    assert "renamed" in page.inner_text(".message")
    page.goto("/subjects")
    assert "Grace Hopper" in page.locator("li.subject .name").all_inner_texts()
    page.goto("/subjects/Grace%20Hopper")
    page.fill("#rename input[name=new_name]", sorted(server[2])[0])  # taken: the page says so, nothing changes
    page.click("#rename button")
    assert "exists already" in page.inner_text(".error")
    assert page.inner_text("#subject-name") == "Grace Hopper"


@pytest.mark.slow
def test_the_gallery_page_and_the_explain_report(page, server):
    page.goto("/gallery?check=1")
    assert page.inner_text("#faces") == "6" and "consistent" in page.inner_text("#check")
    shot(page, "gallery")
    name, files = next(iter(server[2].items()))
    page.goto("/who")
    page.set_input_files("#photo", str(files[0]))
    page.wait_for_selector("#status[data-done]")
    page.click("#explain")
    page.wait_for_url("**/explain/**", timeout=120_000)
    assert name in page.content()
    shot(page, "explain")


def test_a_cluster_is_named_from_its_page_and_enrolled(page, server):
    page.goto("/clusters")
    groups = page.locator("section.cluster")
    assert groups.count() >= 1
    first = groups.first
    faces = int(first.locator("h2 small").inner_text().split()[0])  # "N faces · ..."
    assert faces >= 2 and first.locator("img").count() == min(faces, 12)
    shot(page, "clusters")
    first.locator("input[name=name]").fill("Katherine Johnson")
    first.locator("button").click()
    page.wait_for_url("**/clusters?*")
    assert "named Katherine Johnson" in page.inner_text(".message")
    assert page.locator("section.cluster .cluster-name").first.inner_text() == "Katherine Johnson"
    page.goto("/subjects/Katherine%20Johnson")
    assert page.locator("li.face").count() == faces  # every face of the group enrolled under the name
