"""Debian's chromium through chromedriver, headless, for the browser tests."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import require_binary


def start_chrome(profile: Path, *extra_flags: str):
    """A new headless Chrome with its own profile directory; the browser
    console is kept (driver.get_log("browser")). Call driver.quit() after."""
    binary = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    return driver
