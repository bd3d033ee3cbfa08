"""Browser fixtures: Debian's Chromium driven by Selenium through the system chromedriver.

Nothing is downloaded: the driver and the browser are the ones ``apt-get install
chromium chromium-driver`` put on the PATH (``make test`` installs them), and Selenium
Manager is kept offline. Without them the browser tests skip, except under CI
(``CI`` set), where they fail. Screenshots go to ``$TINKER_TEST_ARTIFACTS/console``,
or to the test's temporary folder.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["Browser"]


def _tools() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = os.environ.get("TINKER_TEST_ARTIFACTS")
    folder = pathlib.Path(root) / "console" if root else tmp_path_factory.mktemp("console-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """A headless Chromium and the folder its downloads land in."""

    def __init__(self, driver: WebDriver, downloads: pathlib.Path, artifacts: pathlib.Path) -> None:
        self.driver = driver
        self.downloads = downloads
        self.artifacts = artifacts

    def screenshot(self, name: str) -> pathlib.Path:
        """The whole page (not just the window) as ``<artifacts>/<name>.png``."""
        import base64

        driver = self.driver
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = self.artifacts / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture(scope="module")
def browser(artifacts: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium, chromedriver = _tools()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1360,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver, downloads, artifacts)
    finally:
        driver.quit()
