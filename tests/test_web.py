"""The search page in a real browser: Playwright driving Debian's Chromium (headless, no sandbox, no background
networking) against a live server over a real index of the sample photos."""
from __future__ import annotations

import base64
import os
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import altered_copy
from pixsearch.api import create_app
from pixsearch.api.server import serving_in_thread
from pixsearch.config import Settings
from pixsearch.samples import write_samples
from pixsearch.service import Engine

playwright_api = pytest.importorskip("playwright.sync_api")

QUERY = "web-query-key-1"
NEWEST = "scikit-image/astronaut.png"
IN_2021 = ["imagenet/imagenet-00-243.jpg", "imagenet/imagenet-01-559.jpg", "scikit-image/coffee.png"]
TIMEOUT_MS = 60_000  # the first query loads the text model in the server


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The sample photos in a folder per source, dated: everything in 2019 except three in 2021 and the newest."""
    folder = tmp_path_factory.mktemp("web-photos")
    write_samples(folder, grouped=True)
    for i, path in enumerate(sorted(folder.rglob("*.*"))):
        when = datetime(2019, 1, 1 + i % 28, tzinfo=timezone.utc)
        relative = path.relative_to(folder).as_posix()
        if relative in IN_2021:
            when = datetime(2021, 6, 1 + IN_2021.index(relative), tzinfo=timezone.utc)
        if relative == NEWEST:
            when = datetime(2024, 3, 1, tzinfo=timezone.utc)
        os.utime(path, (when.timestamp(), when.timestamp()))
    return folder


@pytest.fixture(scope="module")
def site(home, embedder, photos):
    name = "web-" + uuid.uuid4().hex[:8]
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        report = engine.index(name, create=True).add_paths([photos])
        assert not report.failed and report.added == len(list(photos.rglob("*.*")))
        with serving_in_thread(create_app(engine, query_keys=[QUERY], page_index=name)) as url:
            yield url
        engine.delete_index(name)


@pytest.fixture
def page_errors() -> list[str]:
    """Script errors and console errors of the `page` fixture's page: none are expected unless a test says so."""
    return []


@pytest.fixture
def page(browser, site, page_errors):
    # Playwright's string predicates need eval, which the page's Content-Security-Policy forbids: bypassed here;
    # test_works_under_its_content_security_policy runs without the bypass.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = page_errors
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{site}/#key={QUERY}")
    wait_for_results(page, "Recent photos")
    page.evaluate("window.__stillThisPage = true")  # gone if anything reloads the page
    yield page
    assert page.evaluate("window.__stillThisPage === true"), "the page reloaded"
    assert not errors, errors
    context.close()


def wait_for_results(page, heading: str) -> None:
    page.wait_for_function(
        """heading => document.querySelector('#results-heading').textContent === heading
                     && document.querySelector('#results').getAttribute('aria-busy') === 'false'
                     && document.querySelectorAll('#results li').length > 0""",
        arg=heading,
    )


def result_names(page) -> list[str]:
    return page.locator("#results li .name").all_text_contents()


def result_paths(page) -> list[str]:
    return [p for p in page.eval_on_selector_all("#results li", "items => items.map(i => i.dataset.path)")]


def status(page) -> str:
    return page.locator("#status").text_content()


def test_recent_photos_first_with_thumbnails_and_infinite_scroll(page, photos):
    total = len(list(photos.rglob("*.*")))
    assert result_names(page)[0] == "astronaut.png"  # the newest photo
    assert status(page) == f"24 of {total} photos"
    first = page.locator("#results li img").first
    page.wait_for_function("img => img.src.startsWith('blob:') && img.naturalWidth > 0", arg=first.element_handle())
    assert page.locator("#results li .score").count() == 0  # no query, no scores
    page.locator("#sentinel").scroll_into_view_if_needed()
    page.wait_for_function(f"document.querySelectorAll('#results li').length === {total}")
    assert status(page) == f"{total} of {total} photos"
    assert len(set(result_paths(page))) == total
    assert page.locator("#more").is_hidden()


@pytest.mark.parametrize("text, expected", [("a cup of coffee", "coffee.png"), ("a cat", "cat-chelsea.png"),
                                            ("a rocket launch", "rocket.jpg")])
def test_typed_query_shows_the_right_photo_first(page, text, expected):
    page.fill("#q", text)
    page.press("#q", "Enter")
    wait_for_results(page, f"Results for “{text}”")
    assert result_names(page)[0] == expected
    assert re.fullmatch(r"\d\.\d{3}", page.locator("#results li .score").first.text_content())
    assert page.evaluate("new URLSearchParams(location.search).get('q')") == text


def drop_file(page, path: Path, mime: str) -> None:
    """Drag a file from outside the browser onto the page, as the OS would: dragenter, dragover, then drop."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name, mime]) => {
             const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], name, {type: mime}));
             return transfer;
           }""",
        [data, path.name, mime],
    )
    page.dispatch_event("#results-section", "dragenter", {"dataTransfer": transfer})
    assert page.locator("#drop-overlay").is_visible()
    page.dispatch_event("#results-section", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#results-section", "drop", {"dataTransfer": transfer})


def test_dropped_image_finds_its_original(page, photos, tmp_path):
    query = altered_copy(photos / "scikit-image" / "rocket.jpg", tmp_path / "my-rocket.jpg")
    drop_file(page, query, "image/jpeg")
    wait_for_results(page, "Photos like your image")
    assert result_names(page)[0] == "rocket.jpg"
    assert page.locator("#drop-overlay").is_hidden()
    assert page.locator("#query-chip").is_visible() and page.locator("#query-chip-text").text_content() == query.name


def test_a_broken_image_is_a_clear_message_and_the_page_keeps_working(page, page_errors, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    drop_file(page, broken, "image/jpeg")
    page.wait_for_function("!document.querySelector('#error').hidden")
    assert "corrupt or truncated image" in page.locator("#error").text_content()
    assert page_errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    page_errors.clear()
    page.fill("#q", "a cat")
    page.press("#q", "Enter")
    wait_for_results(page, "Results for “a cat”")
    assert page.locator("#error").is_hidden() and result_names(page)[0] == "cat-chelsea.png"


def test_picked_image_finds_its_original(page, photos, tmp_path):
    query = altered_copy(photos / "scikit-image" / "motorcycle.png", tmp_path / "bike.jpg")
    page.set_input_files("#image-input", str(query))
    wait_for_results(page, "Photos like your image")
    assert result_names(page)[0] == "motorcycle.png"
    page.click("#clear-query")
    wait_for_results(page, "Recent photos")


def test_click_a_result_for_more_like_this(page):
    page.fill("#q", "a cat")
    page.press("#q", "Enter")
    wait_for_results(page, "Results for “a cat”")
    page.locator("#results li .thumb").first.click()
    wait_for_results(page, "Photos like cat-chelsea.png")
    assert result_names(page)[0] == "cat-chelsea.png"
    assert page.locator("#results li .score").first.text_content() == "1.000"  # itself: cosine similarity 1
    assert page.locator("#q").input_value() == ""
    assert page.evaluate("document.activeElement.id") == "results-heading"  # focus follows, for screen readers


def test_filters_folder_tags_and_dates(page, photos):
    imagenet = len(list((photos / "imagenet").glob("*")))
    page.select_option("#folder", label=f"imagenet ({imagenet})")
    page.wait_for_function(f"document.querySelector('#status').textContent === '{imagenet} of {imagenet} photos'")
    assert all("/imagenet/" in p for p in result_paths(page))

    tag = page.locator("#tag-list li").first
    tag_name = tag.locator("label").text_content().strip().rsplit(" ", 1)[0]
    tag_count = int(tag.locator(".count").text_content())
    tag.locator("input").check()
    page.wait_for_function(f"document.querySelector('#status').textContent.startsWith('{tag_count} of {tag_count} ')")
    assert page.locator("#tag-list input:checked").count() == 1 and tag_name

    page.click("#clear-filters")
    page.wait_for_function(f"document.querySelector('#status').textContent.endsWith(' of {len(list(photos.rglob('*.*')))} photos')")
    page.fill("#date-from", "2021-01-01")
    page.fill("#date-to", "2021-12-31")
    page.wait_for_function("document.querySelector('#status').textContent === '3 of 3 photos'")
    assert sorted(result_paths(page)) == sorted(str(photos / p) for p in IN_2021)
    page.fill("#q", "a cup of coffee")  # filters hold for searches too
    page.press("#q", "Enter")
    wait_for_results(page, "Results for “a cup of coffee”")
    assert result_names(page) == ["coffee.png"]  # the two others are clearly not coffee: left out, and said so
    assert "left out" in page.locator("#hidden-note").text_content()
    page.click("#show-all")
    page.wait_for_function("document.querySelectorAll('#results li').length === 3")
    assert result_names(page)[0] == "coffee.png" and page.locator("#hidden-note").is_hidden()


def test_keyboard_only_search(page):
    page.locator("#q").focus()
    page.keyboard.type("a rocket launch")
    page.keyboard.press("Enter")
    wait_for_results(page, "Results for “a rocket launch”")
    page.keyboard.press("Tab")  # search button, image button, then on through the filters to the first result
    for _ in range(60):
        if page.evaluate("document.activeElement.closest('#results') !== null"):
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "thumb"
    page.keyboard.press("Enter")
    wait_for_results(page, "Photos like rocket.jpg")


def test_works_under_its_content_security_policy_and_asks_for_a_key(browser, site):
    expect = playwright_api.expect
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    response = page.goto(site + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", "wrong-key")
    page.press("#key-input", "Enter")
    expect(page.locator("#key-reason")).to_contain_text("not accepted")
    page.fill("#key-input", QUERY)
    page.press("#key-input", "Enter")
    expect(page.locator("#results li").first).to_be_visible()
    expect(page.locator("#results li img").first).to_have_attribute("src", re.compile("^blob:"))
    page.reload()  # the key is remembered
    expect(page.locator("#status")).to_contain_text(" photos")
    expect(page.locator("#key-dialog")).to_be_hidden()
    assert not problems, problems
    context.close()


def test_an_unknown_index_says_how_to_make_it(browser, site):
    expect = playwright_api.expect
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{site}/?index=no-such-photos#key={QUERY}")
    expect(page.locator("#error")).to_contain_text("no index named 'no-such-photos'")
    expect(page.locator("#error")).to_contain_text("pixsearch index PATH --index no-such-photos")
    context.close()


def test_no_accessibility_violations(page):
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    for step in ("recent", "results"):
        if step == "results":
            page.fill("#q", "a cat")
            page.press("#q", "Enter")
            wait_for_results(page, "Results for “a cat”")
        violations = axe.run(page).response["violations"]
        assert not violations, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in violations]


@contextmanager
def keyless_page(browser):
    """A page in a fresh browser context (no key kept yet); no script errors are allowed."""
    context = browser.new_context(bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    yield page
    assert not problems, problems
    context.close()


def test_the_key_in_a_link_never_silently_replaces_a_kept_key(browser, site):
    with keyless_page(browser) as page:
        _link_key_is_never_taken_silently(page, site)


def _link_key_is_never_taken_silently(page, site):
    expect = playwright_api.expect
    page.goto(f"{site}/#key={QUERY}")
    expect(page.locator("#results li").first).to_be_visible()
    assert "#key" not in page.url and page.evaluate("localStorage.getItem('pixsearch.apiKey')") == QUERY
    page.goto(f"{site}/?q=a+cat#key=someone-elses-key")
    expect(page.locator("#replace-key-dialog")).to_be_visible()
    assert "#key" not in page.url
    page.click("#replace-key-dialog button[value=keep]")
    expect(page.locator("#results li").first).to_be_visible()
    assert page.evaluate("localStorage.getItem('pixsearch.apiKey')") == QUERY
    page.goto(f"{site}/#key=someone-elses-key")
    page.click("#replace-key-dialog button[value=replace]")
    expect(page.locator("#key-dialog")).to_be_visible()  # that key is not accepted here: asked for one
    assert page.evaluate("localStorage.getItem('pixsearch.apiKey')") == "someone-elses-key"


def test_the_key_can_be_forgotten_and_a_malformed_link_does_not_stop_the_page(browser, site):
    with keyless_page(browser) as page:
        _forget_and_malformed(page, site)


def _forget_and_malformed(page, site):
    expect = playwright_api.expect
    page.goto(f"{site}/#key={QUERY}")
    expect(page.locator("#forget-key")).to_be_visible()
    page.click("#forget-key")
    assert page.evaluate("localStorage.getItem('pixsearch.apiKey')") is None
    expect(page.locator("#forget-key")).to_be_hidden()
    page.fill("#q", "a cat")
    page.press("#q", "Enter")
    expect(page.locator("#key-dialog")).to_be_visible()  # without a key the next search asks for one
    page.goto(f"{site}/#key=%E0%A4%A")
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("malformed")
    page.fill("#key-input", QUERY)
    page.press("#key-input", "Enter")
    expect(page.locator("#results li").first).to_be_visible()
