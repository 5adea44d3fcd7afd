"""A leaderboard page in a real headless browser (Debian's chromium through selenium).

Used by the browser test (sorting, no horizontal overflow at a given width) and by
`python -m bench.report.browser PAGE PNG` to screenshot a committed page. Both need the
optional `chromium`/`chromedriver` binaries and the `selenium` package; `missing()`
says which is absent so a test can skip with that reason."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _binaries() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return browser, shutil.which("chromedriver")


def missing() -> str | None:
    """Why no browser session can start here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    browser, driver = _binaries()
    if browser is None:
        return "no chromium binary on PATH (Debian: apt-get install chromium chromium-driver)"
    if driver is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def page(path: Path, width: int = 1280, height: int = 900) -> Iterator:
    """A headless chromium showing the local file `path` in a window `width` px wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    # --no-sandbox: CI runs as root in a container, where chromium's sandbox cannot start
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(arg)
    drv = webdriver.Chrome(options=opts, service=Service(driver))
    try:
        drv.get(Path(path).resolve().as_uri())
        yield drv
    finally:
        drv.quit()


def overflow_px(drv) -> int:
    """How far the page is wider than the window (0: nothing overflows horizontally)."""
    return int(drv.execute_script("return document.documentElement.scrollWidth - window.innerWidth"))


def screenshot(path: Path, out: Path, width: int = 1280) -> None:
    """The whole page, `width` px wide, as a PNG."""
    with page(path, width) as drv:
        full = int(drv.execute_script("return document.documentElement.scrollHeight"))
        drv.set_window_size(width, min(full + 100, 16000))
        drv.save_screenshot(str(out))


if __name__ == "__main__":
    if len(sys.argv) != 3 or (why := missing()):
        sys.exit("usage: python -m bench.report.browser PAGE.html OUT.png" if len(sys.argv) != 3 else f"bench.report.browser: {why}")
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
