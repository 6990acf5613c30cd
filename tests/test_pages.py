"""The web pages of facesearch serve in a real headless Chromium (Playwright driving the system's browser):
log in, the subjects, a subject renamed from its page, a photo uploaded on "who is this" with the drawn names
read back, the explain report and the gallery page. Each page's screenshot is saved under test-artifacts/
(not committed).

Playwright's own browser download is not used: the tests drive ``chromium`` from the system (Debian's package;
``.ci/run`` installs it). Without one they skip and say why, unless FACESEARCH_REQUIRE_BROWSER=1 (CI), where a
missing browser fails the run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright.sync_api")

from builders import enrolled_gallery, run_cli, serving  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

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
        yield base, key, photos, service
    service.close()


WIDTHS = (390, 1280)  # a phone, a desktop (CSS px)


def browse(chromium, server, width: int = 1280):
    """A logged-in page of a fresh browser context ``width`` CSS px wide."""
    base, key = server[:2]
    context = chromium.new_context(base_url=base, viewport={"width": width, "height": 900 if width > 600 else 844})
    p = context.new_page()
    p.goto("/subjects")  # no key yet: sent to log in
    assert "/login" in p.url
    p.fill("input[name=key]", "fs_wrong")
    p.click("button[type=submit]")
    assert "not known" in p.inner_text(".error")
    shot(p, f"login-{width}")
    p.fill("input[name=key]", key)
    p.click("button[type=submit]")
    p.wait_for_url("**/subjects")
    return p


@pytest.fixture()
def page(chromium, server):
    p = browse(chromium, server)
    yield p
    p.context.close()


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def sized(chromium, server, request):
    p = browse(chromium, server, request.param)
    yield p, request.param
    p.context.close()


def stranger_photos(server, n: int = 1, skip: int = 0):
    """Photos of a sample person neither enrolled nor among the clustered ones (the 10th person on)."""
    people = sorted(p for p in next(iter(server[2].values()))[0].parents[1].iterdir() if p.is_dir())
    return sorted(people[10 + skip].glob("*.jpg"))[:n]


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


def test_a_cluster_is_named_from_a_list_of_people_and_enrolled(page, server):
    service = server[3]
    page.goto("/clusters")
    groups = page.locator("section.cluster")
    assert groups.count() >= 1
    first = groups.first
    faces = int(first.locator("h2 small").inner_text().split()[0])  # "N faces · ..."
    assert faces >= 2 and first.locator("img").count() == min(faces, 12)
    assert "Katherine Johnson" not in first.inner_text()  # (a random model finds everyone alike: some hint or none)
    people = [i.name for i in service.gallery.identities()]
    assert first.locator("select[name=person] option").all_inner_texts()[1:] == people  # the people to pick from
    # the faces in no group are shown, as many as the summary counts
    unclustered = int(page.locator("#unclustered h2 small").inner_text().split()[0])
    assert page.locator("#unclustered img").count() == min(unclustered, 120)
    shot(page, "clusters")
    # a new name that is a listed person's in other letters: refused, nothing enrolled (no duplicate person)
    first.locator("input[name=new_name]").fill(people[0].upper())
    first.locator("button").click()
    page.wait_for_url("**/clusters")
    assert "choose it from the list" in page.inner_text(".error")
    assert [i.name for i in service.gallery.identities()] == people
    page.locator("section.cluster").first.locator("input[name=new_name]").fill("Katherine Johnson")
    page.locator("section.cluster").first.locator("button").click()
    page.wait_for_url("**/clusters")
    assert "named Katherine Johnson" in page.inner_text(".message")
    named = page.locator("section.cluster").first
    assert named.locator(".cluster-name").inner_text() == "Katherine Johnson"
    # "looks like" is the gallery's answer now, not when the clustering ran (before Katherine Johnson existed)
    assert named.locator(".looks-like").inner_text().startswith("looks like Katherine Johnson")
    assert "Katherine Johnson" in named.locator("select[name=person] option").all_inner_texts()
    page.goto("/subjects/Katherine%20Johnson")
    assert page.locator("li.face").count() == faces  # every face of the group enrolled under the name
    page.goto("/clusters")  # the message was shown once: it is gone on the next page
    assert page.locator(".message").count() == 0


def test_every_page_fits_the_width_of_a_phone_and_a_desktop(sized, server):
    page, width = sized
    name, files = next(iter(server[2].items()))
    for path in ("/subjects", f"/subjects/{name}", "/who", "/clusters", "/gallery", "/api/docs", "/no-such-page"):
        page.goto(path)
        if path == "/who":
            page.set_input_files("#photo", str(files[0]))
            page.wait_for_selector("#status[data-done]")
            # the photo is drawn at the width it is shown: its 16 px labels are not scaled down on a phone
            drawn, shown = page.locator("#canvas").evaluate("c => [c.width, c.getBoundingClientRect().width]")
            assert 0 < drawn and abs(drawn - shown) <= 1, (drawn, shown)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path  # no sideways scrolling
        shot(page, f"{path.strip('/').replace('/', '-') or 'home'}-{width}")
        if path in ("/no-such-page", "/api/docs"):
            continue  # public pages: no header of the session
        logout = page.locator("header button.link").bounding_box()
        assert logout["x"] >= 0 and logout["x"] + logout["width"] <= width, path  # "log out" on the screen
        who_link = page.locator("header nav a[href='/who']").bounding_box()
        assert who_link["height"] < 30, path  # "Who is this?" on one line


def test_a_flash_message_is_never_taken_from_the_url(page, server):
    page.goto("/subjects?message=Your+account+is+locked:+call+555-0100&error=pay+now")
    assert page.locator(".message").count() == 0 and page.locator(".error").count() == 0
    assert "555-0100" not in page.content()
    # the server's own message still arrives (in a signed cookie), once
    page.fill("form[action='/subjects'] input[name=name]", "Dorothy Vaughan")
    page.click("form[action='/subjects'] button")
    page.wait_for_url("**/subjects/Dorothy%20Vaughan")
    assert page.inner_text(".message") == "created Dorothy Vaughan" and "message" not in page.url
    page.reload()
    assert page.locator(".message").count() == 0
    cookie = {"name": "facesearch_flash", "value": "eyJtZXNzYWdlIjogImhpIn0.0000", "url": page.url}
    page.context.add_cookies([cookie])  # a forged cookie is not shown either
    page.reload()
    assert page.locator(".message").count() == 0


def test_a_merge_names_both_subjects_and_has_no_default_target(sized, server):
    page, width = sized
    service = server[3]
    source, target = f"Merge From {width}", f"Merge Into {width}"
    people = 2 * WIDTHS.index(width)  # other people at each width: a photo is enrolled once
    for person, photo in ((source, stranger_photos(server, 1, people)[0]),
                          (target, stranger_photos(server, 1, people + 1)[0])):
        service.gallery.create_identity(person)
        assert service.add_photo(person, photo.read_bytes(), photo.name).status == "enrolled"
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.dismiss() if len(asked) == 1 else d.accept()))
    page.goto(f"/subjects/{source}")
    assert page.locator("#merge select").input_value() == ""  # no target until one is chosen
    page.click("#merge button")  # nothing chosen: the browser asks for a choice, nothing is sent
    assert not asked and page.locator("li.face").count() == 1 and page.url.endswith(source.replace(" ", "%20"))
    page.select_option("#merge select", target)
    shot(page, f"merge-{width}")
    page.click("#merge button")  # asked, and dismissed: nothing changes
    assert asked[0].startswith(f"Merge {source} into {target}? {source}'s 1 face become {target}'s")
    assert service.gallery.identity(source).n_faces == 1
    with page.expect_navigation():
        page.click("#merge button")  # asked again, accepted
    assert len(asked) == 2 and page.inner_text("#subject-name") == target
    assert f"merged {source} into {target} (1 faces)" in page.inner_text(".message")
    assert page.locator("li.face").count() == 2


def test_deleting_a_face_asks_first_naming_the_face_and_its_subject(page, server):
    service = server[3]
    photo = stranger_photos(server, 1, skip=4)[0]
    service.gallery.create_identity("Face Owner")
    face = service.add_photo("Face Owner", photo.read_bytes(), photo.name).face_id
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.dismiss() if len(asked) == 1 else d.accept()))
    page.goto("/subjects/Face%20Owner")
    page.click("li.face form button")
    assert asked == [f"Delete face {face} of Face Owner? Its crop and embedding are removed from the gallery; "
                     "there is no undo."]
    assert page.locator("li.face").count() == 1
    with page.expect_navigation():
        page.click("li.face form button")
    assert page.inner_text(".message") == f"deleted face {face}" and page.locator("li.face").count() == 0


@pytest.mark.parametrize("width", WIDTHS)
def test_a_face_answered_on_the_who_page_is_enrolled_as_a_new_or_listed_person(chromium, server, width):
    page = browse(chromium, server, width)
    service, person = server[3], f"Mary Jackson {width}"
    first, second = stranger_photos(server, 2, skip=5 + WIDTHS.index(width))
    page.goto("/who")
    page.set_input_files("#photo", str(first))
    page.wait_for_selector("#status[data-done]")
    form = page.locator("#faces form.assign").first
    form.locator("button").click()  # neither a person nor a name: refused, nothing enrolled
    expect(form.locator(".said")).to_contain_text("Refused: choose a person from the list")
    form.locator("input[name=new_name]").fill(person)
    form.locator("button").click()
    expect(form.locator(".said")).to_contain_text(f"of {person}")
    assert service.gallery.identity(person).n_faces == 1
    shot(page, f"who-assign-{width}")
    # another photo of the same person: the new person is in the list now, chosen there
    page.set_input_files("#photo", str(second))
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('%s')" % second.name)
    page.wait_for_selector("#status[data-done]")
    form = page.locator("#faces form.assign").first
    form.locator("input[name=new_name]").fill(person.lower())  # the same person typed anew: refused
    form.locator("button").click()
    expect(form.locator(".said")).to_contain_text("choose it from the list")
    form.locator("input[name=new_name]").fill("")
    form.locator("select[name=person]").select_option(person)
    form.locator("button").click()
    expect(form.locator(".said")).to_contain_text(f"of {person}")
    with page.expect_navigation():
        form.locator(".said a").click()
    assert page.inner_text("#subject-name") == person and page.locator("li.face").count() == 2
    page.context.close()


@pytest.mark.slow
def test_a_face_called_unknown_is_explained_as_unknown_with_its_file_name(page, server):
    files = next(iter(server[2].values()))
    page.goto("/gallery")
    before = page.input_value("#threshold-form input[name=threshold]")
    page.fill("#threshold-form input[name=threshold]", "1.5")  # refused: not a cosine similarity
    page.evaluate("document.querySelector('#threshold-form input[name=threshold]').removeAttribute('max')")
    page.click("#threshold-form button")
    page.wait_for_url("**/gallery")
    assert "between -1 and 1" in page.inner_text(".error")
    page.fill("#threshold-form input[name=threshold]", "1")  # no photo but an enrolled one may be named
    page.click("#threshold-form button")
    page.wait_for_url("**/gallery")
    assert "threshold set to 1.0000" in page.inner_text(".message")
    assert "set on the gallery page by key browser" in page.inner_text("#threshold")
    try:
        page.goto("/who")
        assert page.inner_text("#threshold") == "1.000" and "set on the gallery page" in page.inner_text(
            "#threshold-source")
        page.set_input_files("#photo", str(files[-1]))  # not an enrolled photo: unknown at this threshold
        page.wait_for_selector("#status[data-done]")
        assert page.locator("#faces .face-name").all_inner_texts() == ["unknown"]
        page.click("#explain")
        page.wait_for_url("**/explain/**", timeout=120_000)
        assert page.inner_text("h1") == "Why facesearch says: unknown"
        answer = page.inner_text("dl dd >> nth=0")
        assert re.fullmatch(r"unknown: the closest identity, (.+), reaches cosine 0\.\d{3,7}, below the threshold "
                            r"1\.0{3,7}; what follows explains why the face looks most like \1", answer), answer
        text = page.inner_text("body")
        markup = re.sub(r"data:image/[^'\"]+", "", page.content())  # the images' bytes aside
        assert files[-1].name in text and "facesearch-serve-" not in markup and "/tmp" not in markup
        shot(page, "explain-unknown")
        with page.expect_navigation():
            page.click("text=Who is this?")  # a way back
        assert page.url.endswith("/who")
    finally:
        page.goto("/gallery")
        page.fill("#threshold-form input[name=threshold]", before)
        page.click("#threshold-form button")
        page.wait_for_url("**/gallery")


def test_a_clustering_is_started_and_followed_from_the_page(page, server, sample_photos):
    from facesearch.cluster import load

    service = server[3]
    before = load(service.clusters)
    folder = Path(before.rows[0].photo).parent
    newcomer = sorted(p for p in sample_photos.iterdir() if p.is_dir())[6]  # a person the clustering has not seen
    for f in sorted(newcomer.glob("*.jpg"))[:3]:
        shutil.copy(f, folder / f"{newcomer.name}-{f.name}")
    page.goto("/clusters")
    with page.expect_navigation():
        page.click("#cluster-again button")
    assert "this page follows it" in page.inner_text(".message")
    expect(page.locator("#clustering")).to_contain_text("Clustering done", timeout=120_000)  # the page reloads itself
    assert "(3 new)" in page.inner_text("#clustering")
    after = load(service.clusters)
    assert len(after.rows) >= len(before.rows) + 3 and after.names == before.names  # named groups keep their names
    assert f"{len(after.rows)} faces" in page.inner_text("main")
    shot(page, "clusters-again")
