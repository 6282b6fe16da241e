"""`dvc plots show` and `dvc plots diff` pages draw every chart with the network off.

A tiny pipeline runs in a temporary git + DVC repo that carries this repo's plots page template
and its `.dvc/config` setting, exactly as a clone would. The pages DVC writes are opened in
headless Chromium (Debian's chromium and chromium-driver, via Selenium) with every request refused:
a proxy on a closed port, no host resolving, and DevTools' offline network emulation. Each chart's
vega-embed container must hold a drawn canvas or SVG. The same charts on DVC's built-in page (which
loads Vega from a CDN) must stay blank, which shows the browser really was offline. In CI a missing
browser is a failure, elsewhere a skip.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, Project, make_project, skip_unless_ci, subprocess_env
from dvc_render.html import PAGE_HTML
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow

DRAW_WAIT_S = 60
# The plots this pipeline declares that DVC draws with Vega: dvclive's curves and the confusion matrix.
EXPECTED_CHARTS = ("accuracy", "loss", "confusion")
OFFLINE_FLAGS = (
    "--proxy-server=http://127.0.0.1:9",  # the discard port: nothing listens there
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)

# Inside each vega-embed container: true once a chart is drawn, as an SVG or a canvas with painted pixels.
DRAWN_JS = """
const box = document.getElementById(arguments[0]);
if (!box) return false;
if (box.querySelector('svg.marks')) return true;  // vega's SVG renderer; the actions menu has an svg icon too
const canvas = box.querySelector('canvas');
if (!canvas || !canvas.width || !canvas.height) return false;
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
return false;
"""


def html_template_setting(root: Path) -> str:
    """This repo's `plots.html_template`, read through DVC itself."""
    result = subprocess.run(["dvc", "config", "--project", "plots.html_template"], cwd=root,
                            env=subprocess_env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"no plots.html_template in {root}/.dvc/config: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mirror_root: Path) -> Project:
    """A project with this repo's plots page, run and committed with 1 epoch, then again with 2 (the README's loop)."""
    project = make_project(tmp_path_factory.mktemp("plots") / "repo", mirror_root)
    setting = html_template_setting(PROJECT_ROOT)
    shutil.copy2(PROJECT_ROOT / ".dvc" / setting, project.path / ".dvc" / setting)
    project.dvc("config", "plots.html_template", setting)
    project.repro()
    project.commit("1 epoch")
    project.set_params({"train.epochs": 2})
    project.repro()
    project.commit("2 epochs")
    return project


def render(project: Project, *command: str, out: str) -> Path:
    """Run a `dvc plots` command writing its page into `out`; the page's path."""
    project.dvc("plots", *command, "-o", out)
    page = project.path / out / "index.html"
    assert page.is_file(), f"dvc plots {' '.join(command)} wrote no {page}"
    return page


def chart_ids(page: Path) -> list[str]:
    """The container of each Vega chart DVC wrote: `vegaEmbed('#<id>', spec)`."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        skip_unless_ci(message)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium must not look for drivers online
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,900", "--disable-extensions", "--no-first-run", *OFFLINE_FLAGS):
            options.add_argument(argument)
        session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        session.execute_cdp_cmd("Network.enable", {})
        session.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        yield session
    finally:
        session.quit()


def undrawn_charts(browser: WebDriver, page: Path) -> list[str]:
    """Open the page and wait for every chart; the ids of those that never drew."""
    ids = chart_ids(page)
    browser.get(page.as_uri())
    with contextlib.suppress(TimeoutException):  # then the answer names the charts that stayed blank
        WebDriverWait(browser, DRAW_WAIT_S).until(lambda b: all(b.execute_script(DRAWN_JS, i) for i in ids))
    return [i for i in ids if not browser.execute_script(DRAWN_JS, i)]


def template_versions() -> dict[str, str]:
    """The versions the template's header names (`vega@5.33.1  sha512-...`)."""
    text = (PROJECT_ROOT / ".dvc" / html_template_setting(PROJECT_ROOT)).read_text(encoding="utf-8")
    return dict(re.findall(r"^\s*(vega(?:-lite|-embed)?)@(\S+)\s+sha512-", text, re.MULTILINE))


def assert_all_drawn_offline(browser: WebDriver, page: Path) -> None:
    ids = chart_ids(page)
    assert "var spec = {};" not in page.read_text(encoding="utf-8"), f"{page}: DVC wrote an empty chart"
    for chart in EXPECTED_CHARTS:
        assert any(chart in i for i in ids), f"no {chart} chart among {ids} in {page}"
    assert not re.search(r"<script[^>]*\bsrc=", page.read_text(encoding="utf-8")), f"{page} loads a script"
    assert undrawn_charts(browser, page) == []
    requests = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in requests if not r.startswith("file:")] == []


def test_plots_show_draws_every_chart_offline(project: Project, browser: WebDriver) -> None:
    assert_all_drawn_offline(browser, render(project, "show", out="shown"))


def test_plots_diff_against_the_previous_commit_draws_every_chart_offline(
        project: Project, browser: WebDriver) -> None:
    assert_all_drawn_offline(browser, render(project, "diff", "HEAD~1", out="diffed"))


def test_page_runs_the_vega_versions_its_header_names(project: Project, browser: WebDriver) -> None:
    browser.get(render(project, "show", out="versions").as_uri())
    loaded = browser.execute_script(
        "return {'vega': vega.version, 'vega-lite': vegaLite.version, 'vega-embed': vegaEmbed.version}")
    assert loaded == template_versions()
    assert set(loaded) == {"vega", "vega-lite", "vega-embed"}


def test_dvc_builtin_page_stays_blank_in_this_browser(project: Project, browser: WebDriver, tmp_path: Path) -> None:
    """The control: DVC's own page loads Vega from a CDN, so with the network off no chart may draw."""
    builtin = tmp_path / "builtin.html"
    builtin.write_text(PAGE_HTML, encoding="utf-8")
    page = render(project, "show", "--html-template", str(builtin), out="builtin")
    assert re.search(r"<script[^>]*\bsrc=\"https://", page.read_text(encoding="utf-8"))
    ids = chart_ids(page)
    browser.get(page.as_uri())  # returns once the page has loaded: its script tags have run or failed
    assert browser.execute_script("return typeof vegaEmbed") == "undefined"
    assert ids and not any(browser.execute_script(DRAWN_JS, i) for i in ids)
