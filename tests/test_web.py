"""The web page in a real headless Chromium (Debian's chromium + chromedriver, via selenium)
against a real server with a small gallery: search, heat map, upload, errors, screenshot; and
the security headers that it runs under."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.fashion_mnist import FASHION_MNIST_CLASSES, load_split
from service.imaging import encode_png
from tests.conftest import API_KEY, AUTH
from tests.support import Server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


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

    # A write without the key shows the server's message; with it, the images are added.
    browser.find_element(By.ID, "upload-files").send_keys(query[1])
    wait.until(lambda d: d.find_element(By.ID, "api-key-field").is_displayed())
    browser.find_element(By.ID, "upload-files").send_keys(query[1])
    wait.until(lambda d: "Authorization" in d.find_element(By.ID, "error").text)
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
