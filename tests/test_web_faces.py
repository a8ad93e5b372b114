"""The search page's people (issue 23) in a real browser: Playwright driving Debian's Chromium against a live server
over one index of composed face photos (tests/face_photos.py: face_recognition's photos of Obama and Biden,
skimage's astronaut Eileen Collins), found and grouped by the real dlib models. The People row, filtering by a
person, faces outlined with names on a photo stored turned (EXIF orientation), naming with an admin key only, names
that look like HTML, and the accessibility checks."""
from __future__ import annotations

import dataclasses
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from face_photos import SOURCES, compose, iou
from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.config import Settings
from pixsearch.service import Engine

pytest.importorskip("dlib")
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

ADMIN = "web-faces-admin-key"
QUERY = "web-faces-query-key"
TIMEOUT_MS = 60_000
OBAMA, OBAMA2, OBAMA3, BIDEN, COLLINS = SOURCES
# photo -> the people in it: Obama in 6 photos, Biden in 5, Collins in 4; the first is stored turned (EXIF 6)
PHOTOS = {
    "two-people.jpg": [OBAMA, BIDEN],
    "obama-a.jpg": [OBAMA2],
    "obama-collins.jpg": [OBAMA3, COLLINS],
    "all-three.jpg": [OBAMA, BIDEN, COLLINS],
    "obama-b.jpg": [OBAMA2],
    "obama-biden.jpg": [OBAMA3, BIDEN],
    "biden-a.jpg": [BIDEN],
    "biden-collins.jpg": [BIDEN, COLLINS],
    "collins-a.jpg": [COLLINS],
}
SIZE = (1024, 768)
BLOB = re.compile("^blob:")
INJECTION = '<img src=x onerror="window.__pwned=1">'


def photos_of(person: str) -> set[str]:
    return {name for name, sources in PHOTOS.items() if any(s.person == person for s in sources)}


@dataclasses.dataclass
class Site:
    url: str
    index: str
    engine: Engine
    folder: Path
    people: dict[str, int]  # obama / biden / collins -> person id
    truth: dict[str, list]  # photo -> its faces (face_photos.Face: person, box in pixels of the upright photo)

    def unname(self, person: str) -> None:
        self.engine.index(self.index).name_person(self.people[person], None)


@pytest.fixture(scope="module")
def site(home, embedder, tmp_path_factory):
    """One indexed folder of the photos above, faces found and grouped; Obama and Biden named, Collins not."""
    folder = tmp_path_factory.mktemp("web-faces")
    truth = {}
    for i, (name, sources) in enumerate(PHOTOS.items()):
        for seed in range(100 + 20 * i, 120 + 20 * i):  # the first arrangement with every face whole in the photo
            photo = compose(seed, len(sources), sizes=(110, 170), people=list(sources), size=SIZE,
                            orientation=6 if name == "two-people.jpg" else 1)
            if len(photo.faces) == len(sources):
                break
        assert len(photo.faces) == len(sources), name
        dataclasses.replace(photo, name=name).save(folder)
        truth[name] = photo.faces
    index_name = "web-faces-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        index = engine.index(index_name, create=True)
        report = index.add_paths([folder], faces=True)
        assert not report.failed and not report.faces["failed"], report.to_json()
        people = {}
        for person in index.people(with_photos=True):
            files = {p["path"].rsplit("/", 1)[-1] for p in person["photos"]}
            who = [w for w in ("obama", "biden", "collins") if photos_of(w) == files]
            assert len(who) == 1, (person, files)
            people[who[0]] = person["id"]
        assert len(people) == 3, people
        index.name_person(people["obama"], "Barack Obama")
        index.name_person(people["biden"], "Joe Biden")
        app = create_app(engine, admin_keys=[ADMIN], query_keys=[QUERY], page_index=index_name)
        with serving_in_thread(app) as url:
            yield Site(url, index_name, engine, folder, people, truth)
        engine.delete_index(index_name)


@pytest.fixture
def collins_unnamed(site):
    site.unname("collins")
    yield
    site.unname("collins")


@contextmanager
def opened(browser, site: Site, key: str, *, bypass_csp: bool = False, refusals: int = 0):
    """The page with `key`, its People row shown. No script errors, console errors or CSP reports are allowed, but
    for `refusals` 403 answers the test asks for."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{site.url}/#key={key}")
    expect(page.locator("#people-list button.person")).to_have_count(3)
    expect(page.locator("#status")).to_have_text(f"{len(PHOTOS)} of {len(PHOTOS)} photos")
    yield page
    refused = [p for p in problems if "status of 403" in p]
    assert len(refused) == refusals and len(problems) == refusals, problems
    context.close()


def person_button(page, site: Site, person: str):
    return page.locator(f'#people-list button.person[data-person="{site.people[person]}"]')


def shown_files(page) -> set[str]:
    paths = page.eval_on_selector_all("#results li", "items => items.map(i => i.dataset.path)")
    return {p.rsplit("/", 1)[-1] for p in paths}


def expect_only(page, files: set[str]) -> None:
    expect(page.locator("#status")).to_have_text(f"{len(files)} of {len(files)} photo{'s' if len(files) > 1 else ''}")
    assert shown_files(page) == files


def open_photo(page, file: str):
    page.locator(f'#results li[data-path$="/{file}"] .view-photo').click()
    dialog = page.locator("#photo-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#photo-faces-status")).to_contain_text("face")
    return dialog


def test_whoami_tells_a_key_its_own_role(site):
    for key, role in ((ADMIN, "admin"), (QUERY, "query")):
        answer = httpx.get(f"{site.url}/whoami", headers={"api-key": key})
        assert answer.status_code == 200 and answer.json() == {"role": role}
    assert httpx.get(f"{site.url}/whoami").status_code == 401
    assert httpx.get(f"{site.url}/whoami", headers={"api-key": "not-a-key"}).status_code == 401


def test_people_row_has_one_entry_per_person_with_their_photo_counts(browser, site, collins_unnamed):
    with opened(browser, site, QUERY) as page:
        entries = {}
        for button in page.locator("#people-list button.person").all():
            entries[int(button.get_attribute("data-person"))] = (
                button.locator(".person-name").text_content(), button.locator(".count").text_content())
        assert entries == {
            site.people["obama"]: ("Barack Obama", "6 photos"),
            site.people["biden"]: ("Joe Biden", "5 photos"),
            site.people["collins"]: (f"Unnamed person {site.people['collins']}", "4 photos"),
        }
        for img in page.locator("#people-list img").all():  # the face crops, fetched with the key
            expect(img).to_have_attribute("src", BLOB)
        assert page.eval_on_selector_all("#people-list img", "imgs => imgs.every(i => i.naturalWidth > 0)")


def test_clicking_a_person_filters_to_exactly_their_photos(browser, site, collins_unnamed):
    with opened(browser, site, QUERY) as page:
        person_button(page, site, "biden").click()
        expect(page.locator("#person-chip")).to_be_visible()
        expect(page.locator("#person-chip-name")).to_have_text("Joe Biden")
        expect(person_button(page, site, "biden")).to_have_attribute("aria-pressed", "true")
        expect_only(page, photos_of("biden"))
        page.click("#clear-person")  # the filter is removable
        expect(page.locator("#person-chip")).to_be_hidden()
        expect_only(page, set(PHOTOS))
        person_button(page, site, "collins").click()  # unnamed: filtered by id
        expect(page.locator("#person-chip-name")).to_have_text(f"Unnamed person {site.people['collins']}")
        expect_only(page, photos_of("collins"))
        person_button(page, site, "obama").click()  # one person at a time
        expect_only(page, photos_of("obama"))
        page.fill("#q", "a man in a suit")  # combined with a text query: ranked by it, only their photos
        page.press("#q", "Enter")
        expect(page.locator("#results-heading")).to_have_text("Results for “a man in a suit”")
        page.click("#show-all")  # the test model calls every photo irrelevant to the text: shown all the same
        expect(page.locator("#status")).to_have_text(f"{len(photos_of('obama'))} results")
        assert shown_files(page) == photos_of("obama")
        expect(page.locator("#person-chip-name")).to_have_text("Barack Obama")


def test_faces_are_outlined_with_names_on_a_turned_photo_of_two_people(browser, site):
    with opened(browser, site, QUERY) as page:
        dialog = open_photo(page, "two-people.jpg")
        image = page.locator("#photo-image")
        expect(image).to_have_attribute("src", BLOB)
        page.wait_for_function("() => document.querySelector('#photo-image').naturalWidth > 0")
        shown = image.bounding_box()
        assert abs(shown["width"] / shown["height"] - SIZE[0] / SIZE[1]) < 0.02  # upright, as the boxes are
        outlines = dialog.locator(".face-box[data-person]")
        expect(outlines).to_have_count(2)
        names = {"obama": "Barack Obama", "biden": "Joe Biden"}
        for face in site.truth["two-people.jpg"]:  # each true face: an outline on it, with that person's name
            scale = SIZE[0] / shown["width"]
            best = max(outlines.all(), key=lambda o: iou(face.box, _original_box(o.bounding_box(), shown, scale)))
            assert iou(face.box, _original_box(best.bounding_box(), shown, scale)) >= 0.5, face
            assert best.locator(".face-label").text_content() == names[face.person]
        # keyboard: Tab from Close reaches the outlines; Enter on one shows that person's photos
        expect(page.locator("#close-photo")).to_be_focused()
        for _ in range(5):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.classList.contains('face-box')"):
                break
        focused = page.evaluate("[document.activeElement.dataset.person, document.activeElement.textContent]")
        person = next(who for who, pid in site.people.items() if str(pid) == focused[0])
        assert focused[1] == f"{names[person]}: show their photos"
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator("#person-chip-name")).to_have_text(names[person])
        expect_only(page, photos_of(person))


def _original_box(box: dict, image: dict, scale: float) -> tuple[float, float, float, float]:
    """An element's box on screen -> pixels of the original photo shown in `image`."""
    x0, y0 = (box["x"] - image["x"]) * scale, (box["y"] - image["y"]) * scale
    return x0, y0, x0 + box["width"] * scale, y0 + box["height"] * scale


def test_an_admin_key_names_a_person_from_the_photo_and_from_the_filter(browser, site, collins_unnamed):
    with opened(browser, site, ADMIN) as page:
        dialog = open_photo(page, "collins-a.jpg")
        face = dialog.locator("#photo-faces li.face", has=page.locator("form"))
        expect(face).to_have_count(1)
        face.get_by_label("Name this person").fill("Eileen Collins")
        face.get_by_role("button", name="Save").click()
        expect(dialog.locator(".face-box[data-person] .face-label")).to_have_text("Eileen Collins")
        expect(dialog.locator("#photo-faces form")).to_have_count(0)
        expect(person_button(page, site, "collins").locator(".person-name")).to_have_text("Eileen Collins")
        page.click("#close-photo")
        person_button(page, site, "collins").click()
        expect(page.locator("#person-chip-name")).to_have_text("Eileen Collins")
        expect(page.locator("#person-name-form")).to_be_hidden()  # named: nothing to name
        expect_only(page, photos_of("collins"))
        # the name is in the people field: a search filter by it finds exactly their photos
        answer = httpx.post(f"{site.url}/indexes/{site.index}/docs/search", headers={"api-key": QUERY},
                            json={"filter": "people/any(p: p eq 'Eileen Collins')", "select": "path", "top": 50})
        assert {h["path"].rsplit("/", 1)[-1] for h in answer.json()["value"]} == photos_of("collins")

        site.unname("collins")  # an unnamed person chosen in the row is named from the filter
        page.reload()
        expect(page.locator("#people-list button.person")).to_have_count(3)
        person_button(page, site, "collins").click()
        expect_only(page, photos_of("collins"))
        page.fill("#person-name-input", "Eileen")
        page.press("#person-name-input", "Enter")
        expect(page.locator("#person-chip-name")).to_have_text("Eileen")
        expect(person_button(page, site, "collins").locator(".person-name")).to_have_text("Eileen")
        expect(page.locator("#person-name-form")).to_be_hidden()
        expect_only(page, photos_of("collins"))  # now filtered by the name
        assert site.engine.index(site.index).person(site.people["collins"])["name"] == "Eileen"


def test_a_query_key_page_offers_no_naming_and_a_forged_request_is_refused(browser, site, collins_unnamed):
    # under the page's own Content-Security-Policy (no bypass): any violation would be a console error
    with opened(browser, site, QUERY, refusals=1) as page:
        dialog = open_photo(page, "collins-a.jpg")
        expect(dialog.locator(".face-box[data-person]")).to_have_count(1)
        expect(dialog.locator("form, input")).to_have_count(0)
        page.click("#close-photo")
        person_button(page, site, "collins").click()
        expect(page.locator("#person-chip")).to_be_visible()
        expect(page.locator("#person-name-form")).to_be_hidden()
        status = page.evaluate(
            """([index, person]) => fetch(`/indexes/${index}/people/${person}`, {method: "PATCH",
                 headers: {"api-key": localStorage.getItem("pixsearch.apiKey"), "content-type": "application/json"},
                 body: JSON.stringify({name: "Mallory"})}).then(r => r.status)""",
            [site.index, site.people["collins"]])
        assert status == 403
        assert site.engine.index(site.index).person(site.people["collins"])["name"] is None


def test_a_name_that_looks_like_html_is_shown_as_text(browser, site, collins_unnamed):
    site.engine.index(site.index).name_person(site.people["collins"], INJECTION)
    with opened(browser, site, QUERY) as page:
        expect(person_button(page, site, "collins").locator(".person-name")).to_have_text(INJECTION)
        person_button(page, site, "collins").click()
        expect(page.locator("#person-chip-name")).to_have_text(INJECTION)
        expect_only(page, photos_of("collins"))  # the filter literal holds it too
        dialog = open_photo(page, "biden-collins.jpg")
        expect(dialog.locator(".face-label", has_text="onerror")).to_have_text(INJECTION)
        expect(dialog.locator(".face-name", has_text="onerror")).to_have_text(INJECTION)
        assert page.locator('img[src="x"]').count() == 0
        assert page.evaluate("window.__pwned === undefined")


def test_no_accessibility_violations_with_people(browser, site, collins_unnamed):
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    with opened(browser, site, ADMIN, bypass_csp=True) as page:  # axe injects its script
        for step in ("row", "filter", "photo"):
            if step == "filter":
                person_button(page, site, "collins").click()
                expect(page.locator("#person-name-form")).to_be_visible()
            if step == "photo":
                dialog = open_photo(page, "all-three.jpg")
                expect(dialog.locator("form")).to_have_count(1)
                expect(page.locator("#photo-image")).to_have_attribute("src", BLOB)
            violations = axe.run(page).response["violations"]
            assert not violations, (step, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3])
                                           for v in violations])
