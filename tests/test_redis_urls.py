"""REDIS_URL forms beyond the default: ACL user and password, TLS (rediss://).
(unix:// is what scripts/run and scripts/stack use; their tests cover it.)"""

from __future__ import annotations

import socket

import pytest
import requests

from tests.support.processes import ManagedProcess, base_env, free_port, require_binary
from tests.support.tls import LocalCA

USER, PASSWORD = "app", "s3cret-pass-for-tests"


@pytest.fixture
def secured_redis(tmp_path):
    """redis-server with the default user off and an ACL user; plain TCP and TLS ports."""
    binary = require_binary("redis-server", "redis-server")
    ca = LocalCA(tmp_path / "ca")
    cert, key = ca.issue("localhost", "127.0.0.1")
    port, tls_port = free_port(), free_port()
    redis_server = ManagedProcess("redis-server", tmp_path / "redis.log")
    redis_server.spawn(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--tls-port", str(tls_port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca.cert_path), "--tls-auth-clients", "no",
         "--user", "default", "off",
         "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
         "--logfile", str(redis_server.log_path)])

    def listening():
        with socket.create_connection(("127.0.0.1", tls_port), timeout=1):
            return True

    redis_server.wait_ready(listening, 10, "redis-server with TLS")
    yield port, tls_port, ca
    redis_server.stop()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_acl_user_and_password_over_tcp_and_tls(secured_redis, make_gunicorn, scheme):
    port, tls_port, ca = secured_redis
    if scheme == "redis":
        url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"
    else:
        url = f"rediss://{USER}:{PASSWORD}@localhost:{tls_port}/0?ssl_ca_certs={ca.cert_path}"
    server = make_gunicorn(base_env(url)).start()
    assert requests.get(server.url + "/readyz", timeout=5).json()["checks"] == {"redis": "ok"}
    r = requests.post(server.url + "/test/session", json={"over": scheme}, timeout=5)
    again = requests.get(server.url + "/test/session", cookies=r.cookies, timeout=5)
    assert again.json() == {"over": scheme}
    assert PASSWORD not in server.stdout() + server.stderr()


def test_wrong_password_is_not_ready_and_says_why(secured_redis, make_gunicorn):
    port, _, _ = secured_redis
    server = make_gunicorn(base_env(f"redis://{USER}:wrong@127.0.0.1:{port}/0")).start()
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert "AuthenticationError" in ready.json()["checks"]["redis"]
    writes = requests.post(server.url + "/test/session", json={"a": 1}, timeout=5,
                           headers={"Accept": "application/json"})
    assert writes.status_code == 503 and writes.json()["error"] == "store_unavailable"
