"""deploy/nginx/render with several app hosts: passive health checks, and
retries on another host for idempotent requests only. (Behaviour under a host
crash: tests/test_scaling.py::test_app_host_killed_under_load.)"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.nginx import RENDER
from tests.support.processes import free_port

APP_HOSTS = ["10.0.0.11:8000", "10.0.0.12:8000", "[fd00::13]:8000"]


def render(tmp_path, *args):
    out = tmp_path / "out"
    command = [sys.executable, str(RENDER), "--out", str(out), "--server-name", "app.test",
               "--http-only", "--listen", "127.0.0.1", "--http-port", str(free_port()),
               "--app-python", sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False), out


def test_several_upstreams_with_passive_health_checks(tmp_path):
    args = [arg for host in APP_HOSTS for arg in ("--upstream", host)]
    result, out = render(tmp_path, *args, "--max-fails", "2", "--fail-timeout", "5s")
    assert result.returncode == 0, result.stderr  # nginx -t accepted it
    site = (out / "site.conf").read_text()
    upstream = re.search(r"upstream service_app \{(.*?)\}", site, re.DOTALL)[1]
    servers = re.findall(r"^\s*server (\S+) (.*);$", upstream, re.MULTILINE)
    assert servers == [(host, "max_fails=2 fail_timeout=5s") for host in APP_HOSTS]
    assert re.search(r"^\s*keepalive \d+;$", upstream, re.MULTILINE)


def test_retries_only_requests_that_cannot_run_twice(tmp_path):
    result, out = render(tmp_path, "--upstream", "unix:/run/service/gunicorn.sock")
    assert result.returncode == 0, result.stderr
    proxy = (out / "snippets" / "proxy.conf").read_text()
    directive = re.search(r"^proxy_next_upstream (.*);$", proxy, re.MULTILINE)[1].split()
    assert directive == ["error", "timeout", "http_502"]
    assert "non_idempotent" not in directive and "http_503" not in directive
    assert re.search(r"^proxy_next_upstream_tries 2;$", proxy, re.MULTILINE)
    # One socket is never taken out of the upstream: there is nowhere else to go.
    assert "server unix:/run/service/gunicorn.sock max_fails=0;" in (out / "site.conf").read_text()


def test_an_upstream_that_is_neither_a_socket_nor_address_port_is_refused(tmp_path):
    result, out = render(tmp_path, "--upstream", "10.0.0.11")
    assert result.returncode == 2
    assert "--upstream '10.0.0.11': give unix:/path or a private address:port" in result.stderr
    assert not out.exists()


def test_a_path_nginx_cannot_take_bare_is_refused_naming_it(tmp_path):
    """A checkout or state directory with a space: one clear line instead of
    a configuration nginx -t rejects as 'invalid number of arguments'."""
    spaced = tmp_path / "my state"
    result, _ = render(spaced, "--upstream", f"unix:{spaced}/gunicorn.sock")
    assert result.returncode == 2
    assert f"--out '{spaced}/out': nginx paths here may not contain whitespace" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (spaced / "out").exists()
    # Where only the socket has one: the same line for --upstream.
    result, _ = render(tmp_path, "--upstream", f"unix:{spaced}/gunicorn.sock")
    assert result.returncode == 2
    assert f"--upstream 'unix:{spaced}/gunicorn.sock': nginx paths here" in result.stderr
