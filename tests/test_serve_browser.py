"""The drawing page in a real browser: headless Chromium (Debian's chromium and chromium-driver) via Selenium.

`mnist-serve` runs as a subprocess on a free loopback port with the real pipeline's model
(servekit.trained_project: real MNIST). The test draws a 7 stroke by stroke with a pen's pointer
events and the page must name 7; another uploads a real MNIST test digit as a PNG file. In CI a
missing browser is a failure, elsewhere a skip.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import skip_unless_ci
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from servekit import Served, serving, trained_project
from test_imageprep import mnist_test

from mnist_pipeline.inference.imageprep import prepare_file

# The pipeline run behind the model (servekit.trained_project) takes most of a minute.
pytestmark = pytest.mark.slow


# The pad is 280x280 CSS pixels; pointer offsets are from its centre. A 7 as people draw it:
# the bar left to right, then the stem down to the lower left.
SEVEN = [[(-70, -90), (70, -90)], [(70, -90), (35, -5), (5, 95)]]
ONE = [[(5, -100), (0, 100)]]
STEP = 6  # pixels between pointer moves: a pen reports its position that often
ANSWER_WAIT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Iterator[Served]:
    project = trained_project(tmp_path_factory, mirror_root)
    with serving(project, log_dir=tmp_path_factory.mktemp("serve-browser")) as served:
        yield served


@pytest.fixture(scope="module")
def browser(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        skip_unless_ci(message)
    monkeypatch_module.setenv("SE_OFFLINE", "true")  # Selenium must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def open_page(browser: WebDriver, server: Served) -> None:
    browser.get(server.url)
    WebDriverWait(browser, ANSWER_WAIT_S).until(lambda b: b.find_elements(By.ID, "card-md5"))


def draw(browser: WebDriver, strokes: list[list[tuple[int, int]]]) -> None:
    """Each stroke: pen down, moves every STEP pixels along its segments, pen up."""
    pad = browser.find_element(By.ID, "pad")
    actions = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_PEN, "pen"), duration=5)
    for stroke in strokes:
        actions.pointer_action.move_to(pad, *stroke[0]).pointer_down()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            steps = max(1, int(np.hypot(x1 - x0, y1 - y0) / STEP))
            for i in range(1, steps + 1):
                actions.pointer_action.move_to(pad, x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)
        actions.pointer_action.pointer_up()
    actions.perform()


def answer(browser: WebDriver) -> list[str]:
    """The top classes the page shows once the answer for the picture as it stands has arrived."""
    def settled(b: WebDriver) -> bool:
        return (b.find_element(By.ID, "result").get_attribute("aria-busy") == "false"
                and bool(b.find_elements(By.CSS_SELECTOR, "#top li") or "error" in
                         b.find_element(By.ID, "status").get_attribute("class")))
    WebDriverWait(browser, ANSWER_WAIT_S).until(settled)
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#top li .name")]


def shown_image(browser: WebDriver) -> np.ndarray:
    source = browser.find_element(By.ID, "seen").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))


def other_hosts(browser: WebDriver, server: Served) -> list[str]:
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in urls if not u.startswith(server.url)]


def test_drawing_a_seven_with_a_pen_shows_seven_then_clear_and_a_one(
    browser: WebDriver, server: Served, tmp_path: Path
) -> None:
    open_page(browser, server)
    draw(browser, SEVEN)
    top = answer(browser)
    browser.save_screenshot(str(tmp_path / "seven.png"))
    assert top[:1] == ["7"], f"the page shows {top} for a drawn 7 (screenshot {tmp_path / 'seven.png'})"
    assert len(top) == 3
    bars = browser.find_elements(By.CSS_SELECTOR, "#top .bar span")
    widths = [bar.size["width"] for bar in bars]
    assert len(widths) == 3 and widths[0] > 0 and widths == sorted(widths, reverse=True), widths
    seen = shown_image(browser)
    assert seen.shape == (28, 28) and seen.max() == 255  # the prepared image the model saw

    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#top li") == []
    assert browser.find_element(By.ID, "seen").get_attribute("src") in (None, "")
    draw(browser, ONE)
    top = answer(browser)
    browser.save_screenshot(str(tmp_path / "one.png"))
    assert top[:1] == ["1"], f"the page shows {top} for a drawn 1 (screenshot {tmp_path / 'one.png'})"
    assert (tmp_path / "seven.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert other_hosts(browser, server) == []


def test_uploading_a_real_test_digit_shows_its_class_and_the_model_card(
    browser: WebDriver, server: Served, mirror_root: Path, tmp_path: Path
) -> None:
    images, labels = mnist_test(mirror_root, 2)
    picture = tmp_path / "two.png"
    Image.fromarray(255 - images[1]).resize((112, 112), Image.Resampling.BICUBIC).save(picture)
    assert labels[1] == 2
    open_page(browser, server)
    browser.find_element(By.ID, "upload").send_keys(str(picture))
    top = answer(browser)
    browser.save_screenshot(str(tmp_path / "upload.png"))
    assert top[:1] == ["2"], f"the page shows {top} for a test 2 (screenshot {tmp_path / 'upload.png'})"
    np.testing.assert_array_equal(shown_image(browser), prepare_file(picture))

    card = json.loads(browser.execute_script("return fetch('/api/model').then(r => r.text())"))
    assert browser.find_element(By.ID, "card-md5").text == card["model"]["md5"]
    assert browser.find_element(By.ID, "card-accuracy").text == f"{100 * card['test_accuracy']:.2f}%"
    confusion = browser.find_element(By.ID, "confusion")
    assert confusion.is_displayed()
    assert browser.execute_script("return arguments[0].naturalWidth", confusion) > 0
    assert "train.epochs" in browser.find_element(By.ID, "card-params").get_attribute("textContent")
