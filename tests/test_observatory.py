"""The MDN HTTP Observatory grades the production shape A+.

tests/observatory/scan.mjs runs the Observatory's own npm package (its
retriever, its 10 tests and its grader) against nginx + gunicorn on loopback.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess

import pytest
import requests

from tests.support.api import PASSWORD
from tests.support.processes import ROOT, require_binary

SCANNER = ROOT / "tests" / "observatory"


def observatory(nginx, path):
    node = require_binary("node", "nodejs")
    if not (SCANNER / "node_modules" / "@mdn" / "mdn-http-observatory").is_dir():
        pytest.fail("the Observatory package is not installed: scripts/test runs "
                    "`npm ci --ignore-scripts` in tests/observatory", pytrace=False)
    result = subprocess.run(
        [node, str(SCANNER / "scan.mjs"), "localhost", str(nginx.http_port),
         str(nginx.https_port), path],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(nginx.ca_file)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


# The scores README quotes (the scanner is pinned in tests/observatory/package.json).
@pytest.mark.parametrize("path, cookies, score", [
    ("/", "cookies-not-found", 130),  # what the Observatory itself scans
    ("/login", "cookies-secure-with-httponly-sessions-and-samesite", 135),  # sets the cookie
])
def test_observatory_grades_a_plus(nginx_front, path, cookies, score):
    nginx, _ = nginx_front(host="localhost")
    report = observatory(nginx, path)
    failed = {name: test["result"] for name, test in report["tests"].items() if not test["pass"]}
    assert failed == {}
    assert report["grade"] == "A+" and report["score"] == score, report
    tests = report["tests"]
    assert tests["content-security-policy"]["result"] == \
        "csp-implemented-with-no-unsafe-default-src-none"
    assert tests["redirection"]["result"] == "redirection-to-https"
    assert tests["strict-transport-security"]["result"] == \
        "hsts-implemented-max-age-at-least-six-months"
    assert tests["cookies"]["result"] == cookies
    print(f"\n{path}: {report['score']} {report['grade']}")


def test_logout_deletion_cookie_through_nginx_keeps_the_host_prefix_rules(nginx_front):
    # Browsers ignore a deletion of a __Host- cookie unless it is Secure with
    # Path=/ and no Domain (Flask-Session's own deletion cookie lacks Secure).
    nginx, _ = nginx_front(host="localhost")
    base = f"https://localhost:{nginx.https_port}"
    with requests.Session() as browser:
        # Not browser.verify: REQUESTS_CA_BUNDLE in the environment would win.
        browser.request = functools.partial(browser.request, verify=str(nginx.ca_file))
        token = browser.get(base + "/api/csrf", timeout=10).json()["csrf_token"]
        headers = {"X-CSRF-Token": token}
        credentials = {"username": "host-cookie", "password": PASSWORD}
        assert browser.post(base + "/api/auth/register", json=credentials, headers=headers,
                            timeout=10).status_code == 201
        login = browser.post(base + "/api/auth/login", json=credentials, headers=headers,
                             timeout=10)
        headers["X-CSRF-Token"] = login.json()["csrf_token"]
        logout = browser.post(base + "/api/auth/logout", headers=headers, timeout=10)
    assert logout.status_code == 204
    cookie = logout.headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=;")
    for attribute in ("Max-Age=0", "Secure", "HttpOnly", "Path=/", "SameSite=Lax"):
        assert attribute in cookie, cookie
    assert "Domain" not in cookie
