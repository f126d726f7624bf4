"""`python -m service check` asks the real Redis what it does when full, and
says so when that would delete accounts or every session (deploy/README.md,
"2. Redis")."""

import secrets
import time

import pytest

from tests.support.processes import ROOT, RedisServer, free_port
from tests.test_config import PROD, run_check

POLICIES = ["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
            "volatile-lfu", "volatile-random", "volatile-ttl"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A Redis of this module's own: its CONFIG is changed here."""
    server = RedisServer(tmp_path_factory.mktemp("redis-policy")).start()
    yield server
    server.stop()


def test_the_kits_redis_config_never_evicts(tmp_path):
    """scripts/run, scripts/stack and the tests start Redis with
    deploy/redis/service.conf, which says so explicitly."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        with server.client() as db:
            assert db.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        server.stop()
    # (tests/test_redis_persistence.py checks that the guide sets it too)
    assert "\nmaxmemory-policy noeviction\n" in (ROOT / "deploy/redis/service.conf").read_text()


def check_against(redis_server, policy, maxmemory="100mb", url=None):
    with redis_server.client() as db:
        db.config_set("maxmemory-policy", policy)
        db.config_set("maxmemory", maxmemory)
    return run_check({**PROD, "REDIS_URL": url or redis_server.url})


@pytest.mark.parametrize("policy", POLICIES)
def test_check_refuses_every_evicting_policy(redis_server, policy):
    result = check_against(redis_server, policy)
    if policy == "noeviction":
        assert result.returncode == 0, result.stderr
        assert "maxmemory" not in result.stderr and "Production-ready" in result.stderr
        return
    assert result.returncode == 1, result.stderr
    assert f"Redis has maxmemory-policy {policy}" in result.stderr
    assert "Set maxmemory-policy noeviction" in result.stderr
    lost = "accounts included" if policy.startswith("allkeys") else "all sessions"
    assert lost in result.stderr


def test_check_notes_a_redis_without_maxmemory(redis_server):
    result = check_against(redis_server, "noeviction", maxmemory="0")
    assert result.returncode == 0, result.stderr
    assert "note: Redis has no maxmemory" in result.stderr


def test_check_says_when_it_may_not_ask(redis_server):
    password = secrets.token_urlsafe(16)
    with redis_server.client() as db:
        # An ACL user that may do everything the app does, but not CONFIG.
        db.acl_setuser("app-only", enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-config"])
    try:
        url = f"redis://app-only:{password}@127.0.0.1:{redis_server.port}/0"
        result = check_against(redis_server, "allkeys-lru", url=url)
    finally:
        with redis_server.client() as db:
            db.acl_deluser("app-only")
            db.config_set("maxmemory-policy", "noeviction")
    assert result.returncode == 0, result.stderr  # not known to be dangerous
    assert "note: could not check Redis' maxmemory-policy (NoPermissionError" in result.stderr
    assert "it must be noeviction" in result.stderr
    assert password not in result.stdout + result.stderr


def test_check_does_not_wait_long_for_an_unreachable_redis():
    started = time.monotonic()
    result = run_check({**PROD, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert time.monotonic() - started < 10
    assert result.returncode == 0, result.stderr
    assert "note: could not check Redis' maxmemory-policy (ConnectionError" in result.stderr
