"""The report as a reader's browser lays it out (headless Chromium through Selenium): the wide
headline table scrolls sideways inside the page, and every tile shows its caption under it."""

from __future__ import annotations

import shutil

import fsspec
import numpy as np
import pytest

from minority_core.report import build_report, write_report
from tests.test_report import make_arm

WINDOW = (1000, 900)  # narrower than the 16-column table, as on a laptop with a side panel


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (apt-get install chromium chromium-driver; .ci/run installs it)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    """A two-arm report with every headline column filled (the widest table), opened from disk."""
    summary = {"confident_share": 0.9, "density": 1.0, "coverage": 0.7, "fid": 12.3, "sfid": 20.1, "seconds_per_sample": 0.02}
    arms = [make_arm("standard", 0.0, seed=1), make_arm("guided", 1.1, seed=2)]
    for arm in arms:
        arm.summary.update(summary)
        arm.labels = np.arange(len(arm.scores["avgknn"])) % 10
    built = build_report(arms, "browser check")
    index = write_report(built, fsspec.filesystem("file"), str(tmp_path_factory.mktemp("report")))
    browser.get(f"file://{index}")
    return browser


def test_the_headline_table_scrolls_sideways(page):
    box = page.execute_script(
        "const s = document.querySelector('.scroll'); const before = s.scrollLeft; s.scrollLeft = 300;"
        "return {columns: s.querySelectorAll('thead th').length, scrollWidth: s.scrollWidth, clientWidth: s.clientWidth,"
        " before: before, after: s.scrollLeft, overflow: getComputedStyle(s).overflowX,"
        " pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth};")
    assert box["columns"] == 17  # Arm + 16 columns
    assert box["scrollWidth"] > box["clientWidth"] and box["overflow"] == "auto"
    assert box["before"] == 0 and box["after"] > 0  # it scrolls: the last columns can be reached
    assert box["pageWidth"] <= box["viewport"]  # the page itself does not overflow: only the table scrolls


def test_every_tile_has_its_caption_under_it(page):
    tiles = page.execute_script(
        "return [...document.querySelectorAll('figure.tile')].map(t => {"
        " const img = t.querySelector('img').getBoundingClientRect(), cap = t.querySelector('figcaption');"
        " const box = cap.getBoundingClientRect();"
        " return {text: cap.innerText, gap: box.top - img.bottom, height: box.height, left: box.left - img.left,"
        "         natural: t.querySelector('img').naturalWidth, width: t.querySelector('img').clientWidth};});")
    assert len(tiles) == 4 * 16
    for tile in tiles:
        assert tile["text"].startswith("AvgkNN ") and "\nlabel " in tile["text"]
        assert 0 <= tile["gap"] < 10 and tile["height"] > 20 and abs(tile["left"]) < 2  # under the image, aligned
        assert tile["natural"] == 8 and tile["width"] == 64  # the 8×8 PNG drawn at 64 px (inside its border)
