"""The HTML pages: forms with CSRF tokens, same-origin next= redirects
(the redirect targets in process, the flows through real gunicorn)."""

import re

import pytest
import requests

from tests.support.api import PASSWORD, new_username


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


@pytest.fixture
def browser(service):
    with requests.Session() as session:
        session.base = service.url
        yield session


def submit(browser, path, fields, page=None):
    page = page or path
    token = csrf_of(browser.get(browser.base + page, timeout=5).text)
    return browser.post(browser.base + path, data={"csrf_token": token, **fields},
                        allow_redirects=False, timeout=10)


def submit_in_process(client, path, fields):
    """submit() for Flask's test client."""
    token = csrf_of(client.get(path).text)
    return client.post(path, data={"csrf_token": token, **fields})


def test_register_login_account_sessions_logout(browser):
    name = new_username()
    r = submit(browser, "/register", {"username": name, "password": PASSWORD})
    assert r.status_code == 302 and r.headers["Location"] == "/login?registered=1"
    r = submit(browser, "/login?next=/sessions", {"username": name, "password": PASSWORD})
    assert r.status_code == 302 and r.headers["Location"] == "/sessions"
    sessions = browser.get(browser.base + "/sessions", timeout=5)
    assert sessions.status_code == 200 and "(this one)" in sessions.text
    account = browser.get(browser.base + "/account", timeout=5)
    number = re.search(r'id="account-number">([^<]+)<', account.text).group(1)
    assert number.startswith("ACCT-")
    assert all(number not in c.value for c in browser.cookies)
    r = submit(browser, "/logout", {}, page="/account")
    assert r.status_code == 302 and r.headers["Clear-Site-Data"]
    after = browser.get(browser.base + "/account", allow_redirects=False, timeout=5)
    assert after.status_code == 302 and after.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("target, expected", [
    ("//evil.example/x", "/account"),
    ("https://evil.example/", "/account"),
    ("/\\evil.example", "/account"),
    ("http:/evil.example", "/account"),
    ("javascript:alert(1)", "/account"),
    ("/sessions?x=1", "/sessions?x=1"),
])
def test_next_only_redirects_to_same_origin_paths(client, target, expected):
    name = new_username()
    submit_in_process(client, "/register", {"username": name, "password": PASSWORD})
    r = submit_in_process(client, "/login?" + requests.compat.urlencode({"next": target}),
                          {"username": name, "password": PASSWORD})
    assert r.status_code == 302
    assert r.headers["Location"] == expected


def test_wrong_password_rerenders_the_form_with_401(browser):
    r = submit(browser, "/login", {"username": new_username(), "password": "nope nope nope"})
    assert r.status_code == 401
    assert "Invalid username or password." in r.text


def test_a_form_without_its_csrf_token_is_403(browser):
    r = browser.post(browser.base + "/login", data={"username": "x", "password": "y"},
                     headers={"Accept": "text/html"}, timeout=5)
    assert r.status_code == 403
    assert "<h1>403 Forbidden</h1>" in r.text
