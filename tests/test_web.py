"""The web page in a real headless Chromium (Debian's chromium + chromedriver, via selenium)
against a real server with a small gallery: search, heat map, upload, API keys, errors,
screenshot; and the security headers that it runs under."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.fashion_mnist import FASHION_MNIST_CLASSES, load_split
from service.imaging import encode_png
from service.routes import WEB_DIR
from testkit.app import make_settings, wait_ready
from testkit.proxy import Action, Proxy, Script
from testkit.server import API_KEY, AUTH, Server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PAGE_FILES = ("/", "/web/app.js", "/web/style.css", "/favicon.ico")


def test_every_response_says_nosniff_and_pages_may_run_only_the_services_own_script(
    client: TestClient,
) -> None:
    page = client.get("/")
    answers = {
        "page": page,
        "static file": client.get("/web/app.js"),
        "JSON": client.get("/info"),
        "404": client.get("/images/nobody"),
        "401": client.post("/images"),
        "invalid": client.post("/nearest", json={}),
        "image": client.get("/images/nobody/content"),
        "docs": client.get("/docs"),
    }
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "unsafe-inline" not in policy and "img-src 'self' blob: data:;" in policy
    assert answers["404"].headers["content-security-policy"] == policy
    assert "content-security-policy" not in answers["docs"].headers  # Swagger UI: a CDN, inline


def test_the_page_builds_its_dom_from_nodes_never_from_html_text() -> None:
    script = (WEB_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in script
    page = (WEB_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\ssrc=)", page)  # no inline script: the CSP forbids it
    assert not re.search(r"\s(on[a-z]+|style)=", page)  # nor inline handlers and styles


@pytest.fixture
def gallery_server(artifact: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(artifact, tmp_path / "data")
    server.start()
    images, labels = load_split("test")
    with httpx.Client(base_url=server.url) as client:
        response = client.post(
            "/images",
            headers=AUTH,
            files=[("files", (f"{i}.png", encode_png(images[i]), "image/png")) for i in range(12)],
            data={
                "ids": [f"fm-{i}" for i in range(12)],
                "metadata": [
                    json.dumps({"label": FASHION_MNIST_CLASSES[labels[i]]}) for i in range(12)
                ],
            },
        )
        assert response.status_code == 201
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    """Headless Chromium; afterwards, its console must show no Content-Security-Policy refusal."""
    if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium and chromium-driver (CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1400",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    try:
        console = [entry["message"] for entry in driver.get_log("browser")]
        assert not [line for line in console if "Content Security Policy" in line], console
    finally:
        driver.quit()


def _query_files(tmp_path: Path, count: int) -> list[str]:
    images, _ = load_split("test")
    paths = []
    for i in range(count):
        path = tmp_path / f"query-{i}.png"
        path.write_bytes(encode_png(images[100 + i]))
        paths.append(str(path))
    return paths


def test_page_searches_by_upload_shows_a_heat_map_and_adds_images(
    gallery_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(gallery_server.url + "/")
    wait.until(lambda d: "model" in d.find_element(By.ID, "model-info").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 12)

    query = _query_files(tmp_path, 3)
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("5")
    browser.find_element(By.ID, "query-file").send_keys(query[0])
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .tile")) == 5)
    scores = [float(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#results .score")]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(-1 <= s <= 1 for s in scores)
    thumbnail = browser.find_element(By.CSS_SELECTOR, "#results .tile img")
    assert (
        browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", thumbnail
        )
        == 28
    )

    browser.find_element(By.ID, "compare-files").send_keys("\n".join(query))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table.heatmap td")) == 9)
    diagonal = browser.find_elements(By.CSS_SELECTOR, "table.heatmap tr:nth-child(2) td")[0].text
    assert diagonal == "1.00"

    # A write without the key asks for one, with the server's message; with it, it is added.
    browser.find_element(By.ID, "upload-files").send_keys(query[1])
    wait.until(lambda d: "needs an API key" in d.find_element(By.ID, "error").text)
    assert "Authorization" in browser.find_element(By.ID, "error").text
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "upload-files").send_keys(query[2])
    wait.until(lambda d: "added 1 image" in d.find_element(By.ID, "upload-status").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 13)
    assert not browser.find_element(By.ID, "more").is_displayed()  # one page holds them all

    # Clicking a gallery image searches by it; it is its own best match.
    browser.find_elements(By.CSS_SELECTOR, "#gallery .tile")[3].click()
    wait.until(lambda d: d.find_element(By.ID, "query-preview").text == "Query: fm-3")
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#results .score")
            and d.find_element(By.CSS_SELECTOR, "#results .score").text == "1.000"
        )
    )

    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "web-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_page_is_usable_at_phone_width(gallery_server: Server, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(390, 844)
    browser.get(gallery_server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .tile"))
    page_width = browser.execute_script("return document.documentElement.scrollWidth")
    viewport = browser.execute_script("return window.innerWidth")
    assert page_width <= viewport  # nothing forces sideways scrolling
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "web-page-phone.png"))


def test_page_switches_collections_for_the_gallery_search_and_uploads(
    gallery_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    images, _ = load_split("test")
    with httpx.Client(base_url=gallery_server.url, headers=AUTH) as client:
        assert client.put("/collections/shoes").status_code == 201
        made = client.post(
            "/collections/shoes/images",
            files=[("files", (f"{i}.png", encode_png(images[i]), "image/png")) for i in (0, 50)],
            data={"ids": ["fm-0", "shoe-50"]},
        )
        assert made.status_code == 201
    wait = WebDriverWait(browser, 20)
    browser.get(gallery_server.url + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 12)
    switcher = Select(browser.find_element(By.ID, "collection"))
    assert [o.text for o in switcher.options] == ["default (12)", "shoes (2)"]
    switcher.select_by_value("shoes")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 2)

    query = _query_files(tmp_path, 1)
    browser.find_element(By.ID, "query-file").send_keys(query[0])
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .tile"))
    found = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .tile .meta")]
    assert sorted(found) == ["fm-0", "shoe-50"]  # only this collection's images

    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "upload-files").send_keys(query[0])
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 3)
    switcher = Select(browser.find_element(By.ID, "collection"))
    wait.until(lambda d: "shoes (3)" in [o.text for o in switcher.options])
    switcher.select_by_value("default")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 12)


def _with_keys(upstream: str, read_key: str) -> Script:
    """A proxy script that keeps reads private in front of a server with public reads: every
    request but the page's own files needs a key, and `read_key` (a real read key of the
    server) may only read (a 403 for writes). /info says so."""
    served = {**httpx.get(upstream + "/info", headers=AUTH).json(), "public_reads": False}

    def script(method: str, path: str, headers: Mapping[str, str]) -> Action:
        if path in PAGE_FILES or path.startswith("/web/"):
            return None
        key = headers.get("authorization")
        if key not in (f"Bearer {API_KEY}", f"Bearer {read_key}"):
            message = "this needs Authorization: Bearer <key>"
            return 401, {"error": {"code": "unauthorized", "message": message}}
        writes = method in ("PUT", "DELETE") or (method == "POST" and path.endswith("/images"))
        if writes and key == f"Bearer {read_key}":
            return 403, {"error": {"code": "forbidden", "message": "this key may only read"}}
        return (200, served) if path == "/info" else None

    return script


def test_page_takes_a_key_sends_it_with_every_request_and_shows_images_from_blobs(
    gallery_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    error = lambda d: d.find_element(By.ID, "error").text  # noqa: E731
    tiles = lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .tile img")  # noqa: E731
    shown = """return arguments[0].every(
        (img) => img.src.startsWith("blob:") && img.complete && img.naturalWidth === 28)"""
    query = _query_files(tmp_path, 2)
    read_key = gallery_server.run_command("keys", "create", "--name", "page", "--scope", "read")
    time.sleep(1.5)  # every worker loads the new key within a second
    with Proxy(gallery_server.url, _with_keys(gallery_server.url, read_key)) as proxy:
        browser.get(proxy.url + "/")
        wait.until(lambda d: "needs an API key" in error(d))  # /info answered 401
        assert browser.switch_to.active_element.get_attribute("id") == "api-key"
        assert not tiles(browser)

        key = browser.find_element(By.ID, "api-key")
        key.send_keys(read_key + "\n")  # Enter: the page loads again, with the key
        wait.until(lambda d: len(tiles(d)) == 12 and d.execute_script(shown, tiles(d)))
        assert not error(browser)
        first_image = tiles(browser)[0].get_attribute("src")
        browser.find_element(By.ID, "upload-files").send_keys(query[0])
        wait.until(lambda d: "this key may only read (403 forbidden)" in error(d))

        key.clear()
        key.send_keys(API_KEY + "\n")
        wait.until(lambda d: not error(d))
        browser.find_element(By.ID, "upload-files").send_keys(query[0])
        wait.until(lambda d: len(tiles(d)) == 13 and d.execute_script(shown, tiles(d)))
        browser.find_element(By.ID, "query-file").send_keys(query[1])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .tile"))
        browser.find_element(By.ID, "compare-files").send_keys("\n".join(query))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table.heatmap td")) == 4)
        revoked = browser.execute_async_script(
            "const img = new Image(), done = arguments[1];"
            "img.onload = () => done(false); img.onerror = () => done(true);"
            "img.src = arguments[0];",
            first_image,
        )
        assert revoked  # the first gallery's object URLs were freed when it was replaced

        browser.refresh()  # the key is kept for the tab
        wait.until(lambda d: len(tiles(d)) == 13 and d.execute_script(shown, tiles(d)))
        assert browser.find_element(By.ID, "api-key").get_property("value") == API_KEY

    unkeyed = [seen.path for seen in proxy.seen if seen.authorization is None]
    assert set(unkeyed) - set(PAGE_FILES) == {"/info"} and unkeyed.count("/info") == 1
    asked = {seen.path.split("?")[0] for seen in proxy.seen if seen.path not in PAGE_FILES}
    assert {"/info", "/collections", "/images", "/nearest", "/similarity"} <= asked
    assert len([path for path in asked if path.endswith("/content")]) == 13


def test_a_gallery_load_overtaken_by_a_newer_one_is_dropped(
    gallery_server: Server, browser, tmp_path: Path
) -> None:
    """A new key reloads the gallery; an upload right after it reloads it again. The first
    load's page, answered last, must not be appended to the second's (the tiles doubled)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    tiles = lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .tile img")  # noqa: E731
    held = threading.Event()  # the keyed page's first gallery request, held back 3 s

    def script(method: str, path: str, headers: Mapping[str, str]) -> Action:
        keyed = headers.get("authorization") == f"Bearer {API_KEY}"
        if method == "GET" and path.startswith("/images?") and keyed and not held.is_set():
            held.set()
            time.sleep(3)
        return None

    with Proxy(gallery_server.url, script) as proxy:
        browser.get(proxy.url + "/")  # public reads: the gallery shows without a key
        wait.until(lambda d: len(tiles(d)) == 12)
        browser.find_element(By.ID, "api-key").send_keys(API_KEY + "\n")
        wait.until(lambda d: held.is_set())
        browser.find_element(By.ID, "upload-files").send_keys(_query_files(tmp_path, 1)[0])
        wait.until(lambda d: len(tiles(d)) == 13)
        time.sleep(4)  # the held answer arrives meanwhile, and is dropped
        assert len(tiles(browser)) == 13


def test_page_shows_file_names_as_text_never_as_html(
    gallery_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images, _ = load_split("test")
    names = ["<img src=x onerror=window.pwned=1>.png", '" onload="window.pwned=2" <b>bold.png']
    paths = []
    for i, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(encode_png(images[200 + i]))
        paths.append(str(path))
    wait = WebDriverWait(browser, 20)
    browser.get(gallery_server.url + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 12)
    browser.find_element(By.ID, "compare-files").send_keys("\n".join(paths))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table.heatmap td")) == 4)
    headers = browser.find_elements(By.CSS_SELECTOR, "table.heatmap th img")
    assert [img.get_attribute("alt") for img in headers] == names * 2
    assert not browser.find_elements(By.CSS_SELECTOR, "table.heatmap b, img[src$='/x']")

    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.ID, "upload-files").send_keys(paths[0])
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery .tile")) == 13)
    metas = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#gallery .tile .meta")]
    assert f"name: {names[0]}" in metas
    assert browser.execute_script("return window.pwned") is None


def test_page_says_when_the_service_is_open_or_its_reads_public(
    artifact: Path, gallery_server: Server, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    notice = lambda d: d.find_element(By.ID, "access").text  # noqa: E731
    open_server = Server(artifact, tmp_path / "open")
    del open_server.env["LOOKALIKE_API_KEY"]
    open_server.start()
    try:
        browser.get(open_server.url + "/")
        wait.until(lambda d: "This service is open" in notice(d))
        assert not browser.find_element(By.ID, "api-key-field").is_displayed()
    finally:
        open_server.stop()

    served = {**httpx.get(gallery_server.url + "/info", headers=AUTH).json(), "public_reads": True}
    public = lambda method, path, headers: (200, served) if path == "/info" else None  # noqa: E731
    with Proxy(gallery_server.url, public) as proxy:
        browser.get(proxy.url + "/")
        wait.until(lambda d: "Reads on this service are public" in notice(d))
        assert "search and download its images without a key" in notice(browser)
        assert browser.find_element(By.ID, "api-key-field").is_displayed()


def test_a_500_carries_the_security_headers_once(artifact: Path, tmp_path: Path) -> None:
    """Starlette writes an unhandled exception's 500 past every added middleware."""
    app = create_app(make_settings(artifact, tmp_path / "data"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        answer = client.get("/boom")
        assert answer.status_code == 500
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
        assert len(answer.headers.get_list("content-security-policy")) == 1
        inside = client.post("/nearest", json={"id": "nobody"})  # an error the app maps
        assert inside.headers.get_list("x-content-type-options") == ["nosniff"]
