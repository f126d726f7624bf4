"""The MDN HTTP Observatory grades the production shape A+.

tests/observatory/scan.mjs runs the Observatory's own npm package (its
retriever, its 10 tests and its grader) against nginx + gunicorn on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

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
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(nginx.ca_file)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path, cookies", [
    ("/", "cookies-not-found"),  # what the Observatory itself scans
    ("/login", "cookies-secure-with-httponly-sessions-and-samesite"),  # sets the session cookie
])
def test_observatory_grades_a_plus(nginx_front, path, cookies):
    nginx, _ = nginx_front(host="localhost")
    report = observatory(nginx, path)
    failed = {name: test["result"] for name, test in report["tests"].items() if not test["pass"]}
    assert failed == {}
    assert report["grade"] == "A+" and report["score"] >= 100, report
    tests = report["tests"]
    assert tests["content-security-policy"]["result"] == \
        "csp-implemented-with-no-unsafe-default-src-none"
    assert tests["redirection"]["result"] == "redirection-to-https"
    assert tests["strict-transport-security"]["result"] == \
        "hsts-implemented-max-age-at-least-six-months"
    assert tests["cookies"]["result"] == cookies
    print(f"\n{path}: {report['score']} {report['grade']}")
