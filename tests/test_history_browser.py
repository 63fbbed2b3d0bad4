"""history.html and report.html in a real browser: headless Chromium from the OS, driven by playwright.

Both pages are opened from file://; every chart must show data points, the filter and the raw/floor toggle must
change what is shown, a hover must name the commit, and no request may leave the page. Screenshots are saved
under the test's tmp_path (printed). Without Chromium the tests skip, naming the install command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.history import main as history_main
from tests.history_fixture import STEPS, write_history

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]  # one Chromium per run, not per worker
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: apt-get update && apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("history-browser")
    write_history(root / "runs")
    assert history_main([str(root / "runs"), "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The page at file://path with every request outside it recorded (the page itself is the one allowed)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if request.url != path.as_uri() else None)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, requests, errors


def shown_points(page) -> dict[str, int]:
    return page.eval_on_selector_all(
        "#charts section.chart",
        "sections => Object.fromEntries(sections.map(s => [s.dataset.group, s.querySelectorAll('circle.pt').length]))",
    )


def test_history_page(browser, pages, capsys):
    page, requests, errors = open_page(browser, pages / "history.html")
    charts = shown_points(page)
    assert charts and all(count > 0 for count in charts.values()), charts
    cells = json.loads((pages / "history.json").read_text(encoding="utf-8"))["cells"]
    assert set(charts) == {f"{cell['operation']} {cell['method']}" for cell in cells}  # a chart per operation x method
    steps = page.eval_on_selector_all("g.step", "steps => steps.map(s => s.dataset.commit)")
    assert len(steps) == len(STEPS)
    page.screenshot(path=str(pages / "history.png"), full_page=False)

    page.select_option("#method", "lmdb")
    filtered = shown_points(page)
    assert set(filtered) == {"read_many lmdb", "read_random lmdb"}
    page.select_option("#size", "100")
    assert set(shown_points(page)) == {"read_many lmdb"}
    page.select_option("#size", "")
    page.select_option("#method", "")

    raw_y = page.eval_on_selector_all("circle.pt", "dots => dots.map(d => d.getAttribute('cy'))")
    page.select_option("#mode", "floor")
    floor = shown_points(page)
    assert "floor floor-memcpy" not in floor and floor != charts  # memcpy has no floor of its own
    assert page.eval_on_selector_all("circle.pt", "dots => dots.map(d => d.getAttribute('cy'))") != raw_y
    page.select_option("#scale", "linear")
    page.screenshot(path=str(pages / "history-floor-linear.png"))
    page.select_option("#mode", "raw")
    page.select_option("#scale", "log")

    dot = page.locator("section.chart circle.pt").nth(5)
    commit = dot.get_attribute("data-commit")
    dot.hover()
    tip = page.locator("#tip")
    assert tip.is_visible() and f"commit {commit}" in tip.inner_text()
    page.screenshot(path=str(pages / "history-hover.png"))
    assert requests == [] and errors == []
    with capsys.disabled():
        print(f"\nscreenshots in {pages}")


def test_report_page(browser, pages):
    page, requests, errors = open_page(browser, pages / "report.html")
    charts = page.eval_on_selector_all(
        "figure.chart svg", "svgs => svgs.map(s => s.querySelectorAll('path, use').length)"
    )
    assert charts and all(count > 20 for count in charts), charts  # axes, lines and markers drawn
    assert len(charts) == len(list(pages.glob("*.svg")))
    assert page.locator("table").count() >= 5
    table = page.locator("table").nth(2)
    first = table.locator("tbody tr").first.inner_text()
    table.locator("thead th").nth(3).click()  # sort by median
    page.wait_for_timeout(50)
    ascending = table.locator("tbody tr").first.inner_text()
    table.locator("thead th").nth(3).click()
    assert table.locator("tbody tr").first.inner_text() != ascending or first != ascending
    page.screenshot(path=str(pages / "report.png"))
    assert requests == [] and errors == []
