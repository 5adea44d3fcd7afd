"""The committed leaderboard page in a real headless browser: its tables sort when a
header is clicked, and nothing is wider than a 1280 px window. Skipped, with the reason,
where chromium, chromedriver or selenium is absent."""

import re
from pathlib import Path

import pytest

from bench.report import browser

PAGE = Path(__file__).resolve().parents[1] / "leaderboards" / "micro.html"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]


def _column(drv, table_id: str, col: int) -> list[float | None]:
    cells = drv.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".map(r => r.cells[arguments[1]].getAttribute('data-sort') ?? r.cells[arguments[1]].textContent)",
        table_id,
        col,
    )
    # the leading number, as the page's parseFloat reads "20.3 ± 15.3"; n/a sorts last either way
    return [float(m.group()) if (m := re.match(r"\s*-?\d+(\.\d+)?", c or "")) else None for c in cells]


@pytest.fixture
def drv():
    from selenium.common.exceptions import WebDriverException

    try:
        ctx = browser.page(PAGE, width=1280)
        d = ctx.__enter__()
    except WebDriverException as e:  # installed but cannot start here (no display libs, no /dev/shm)
        pytest.skip(f"chromium did not start: {str(e).splitlines()[0]}")
    yield d
    ctx.__exit__(None, None, None)


def test_the_page_sorts_and_fits_1280px(drv):
    from selenium.webdriver.common.by import By

    assert drv.title and "Leaderboard" in drv.find_element(By.TAG_NAME, "h1").text
    assert browser.overflow_px(drv) <= 0, "the page is wider than 1280 px"
    heads = drv.find_elements(By.CSS_SELECTOR, "#summary-table-0 thead th")
    names = [h.text.strip() for h in heads]
    col = next(i for i, n in enumerate(names) if n.startswith("ASR@95"))
    heads[col].click()
    asc = [v for v in _column(drv, "summary-table-0", col) if v is not None]
    assert asc == sorted(asc) and len(asc) >= 2, asc
    heads[col].click()
    desc = [v for v in _column(drv, "summary-table-0", col) if v is not None]
    assert desc == sorted(desc, reverse=True), desc
    # every table is either narrower than the window or scrolls inside its own box
    wide = drv.execute_script(
        "return Array.from(document.querySelectorAll('table')).filter(t => "
        "t.getBoundingClientRect().right > window.innerWidth && !t.closest('.scroll')).length"
    )
    assert wide == 0
    errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors
