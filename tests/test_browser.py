"""A real browser (Debian's chromium through chromedriver) registers, logs in,
sees the sessions page and logs out, with no CSP violation in the console."""

import shutil

import pytest

from tests.support.api import PASSWORD, new_username
from tests.support.browser import start_chrome


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = start_chrome(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def csp_violations(driver):
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def test_the_console_check_sees_a_csp_violation(chrome, service):
    # Positive control: the check below can fail.
    chrome.get(service.url + "/test/csp-violation")
    assert any("style-src" in message for message in csp_violations(chrome))


def test_register_login_sessions_logout_without_csp_violations(chrome, service):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    def click(element_id, until):
        chrome.find_element(By.ID, element_id).click()
        WebDriverWait(chrome, 10).until(until)

    name = new_username("browser")
    chrome.delete_all_cookies()
    csp_violations(chrome)  # drain earlier entries

    chrome.get(service.url + "/register")
    chrome.find_element(By.ID, "username").send_keys(name)
    chrome.find_element(By.ID, "password").send_keys(PASSWORD)
    click("register", seen.url_contains("/login"))
    assert "Account created" in chrome.page_source

    chrome.find_element(By.ID, "username").send_keys(name)
    chrome.find_element(By.ID, "password").send_keys(PASSWORD)
    click("login", seen.url_contains("/account"))
    assert chrome.find_element(By.ID, "account-number").text.startswith("ACCT-")
    # The stylesheet really applied (an external file, allowed by the CSP).
    nav = chrome.find_element(By.TAG_NAME, "nav")
    assert nav.value_of_css_property("display") == "flex"

    cookies = {c["name"]: c for c in chrome.get_cookies()}
    assert set(cookies) == {"session"}
    assert cookies["session"]["httpOnly"] is True
    assert cookies["session"]["sameSite"] == "Lax"

    chrome.find_element(By.LINK_TEXT, "Sessions").click()
    WebDriverWait(chrome, 10).until(seen.url_contains("/sessions"))
    rows = chrome.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")
    assert len(rows) == 1 and "(this one)" in rows[0].text

    click("logout", seen.presence_of_element_located((By.LINK_TEXT, "Log in")))
    assert "session" not in {c["name"] for c in chrome.get_cookies()}
    chrome.get(service.url + "/account")
    assert "/login" in chrome.current_url

    assert csp_violations(chrome) == []
