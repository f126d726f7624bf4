"""A crash of Redis (SIGKILL) loses nothing it acknowledged: with the service's
settings (deploy/redis/service.conf: AOF, fsync every second) every account
registered through the app is there after the restart, and no session that
was logged out comes back."""

import re
import signal

import pytest
import requests

from tests.support.api import PASSWORD, new_username
from tests.support.processes import REDIS_CONF, ROOT, RedisServer, base_env, wait_until

USERS, LOGGED_OUT, ROUNDS = 20, 5, 3


def directives(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


@pytest.fixture
def crashable(tmp_path, make_gunicorn):
    redis_server = RedisServer(tmp_path / "redis").start()
    server = make_gunicorn(base_env(redis_server.url, AUTH_RATE_LIMIT="1000 per minute",
                                    LOGIN_FAILURE_LIMIT="1000 per minute")).start()
    yield redis_server, server
    redis_server.stop()


def test_the_guide_sets_what_service_conf_sets():
    guide = (ROOT / "deploy" / "README.md").read_text()
    redis_section = re.search(r"^## 2\. Redis$(.*?)^## ", guide, re.MULTILINE | re.DOTALL)
    blocks = re.findall(r"^```\n(.*?)^```", redis_section.group(1), re.MULTILINE | re.DOTALL)
    wanted = directives(REDIS_CONF.read_text())
    assert {"appendonly yes", "appendfsync everysec"} <= wanted
    assert any(wanted <= directives(block) for block in blocks), blocks


def test_sigkill_keeps_every_account_and_no_logged_out_session(crashable, api):
    redis_server, server = crashable
    with redis_server.client() as db:
        assert db.config_get("appendonly") == {"appendonly": "yes"}
        assert db.config_get("appendfsync") == {"appendfsync": "everysec"}
    registered, logged_out, live = [], [], []
    for _ in range(ROUNDS):
        names = [new_username("durable") for _ in range(USERS)]
        for name in names:
            assert api(server.url).register(name, PASSWORD).status_code == 201
        registered += names
        for name in names[:LOGGED_OUT]:
            client = api(server.url)
            assert client.login(name, PASSWORD).status_code == 200
            logged_out.append(client.sid)
            assert client.logout().status_code == 204
        for name in names[LOGGED_OUT:2 * LOGGED_OUT]:
            client = api(server.url)
            assert client.login(name, PASSWORD).status_code == 200
            live.append(client)

        # At once after the last answer: no time for a snapshot or an fsync.
        redis_server.process.send_signal(signal.SIGKILL)
        assert redis_server.process.wait(5) == -signal.SIGKILL
        redis_server.start()  # same port, same directory
        wait_until(lambda: requests.get(server.url + "/readyz", timeout=2).status_code == 200,
                   10, "readyz after the restart")

        missing = [name for name in registered
                   if api(server.url).login(name, PASSWORD).status_code != 200]
        assert missing == []
        for sid in logged_out:
            stale = api(server.url)
            stale.http.cookies.set("session", sid)
            assert stale.get("/api/me").status_code == 401
        with redis_server.client() as db:
            assert [sid for sid in logged_out if db.exists(f"session:{sid}")] == []
        assert [client.get("/api/me").status_code for client in live] == [200] * len(live)
