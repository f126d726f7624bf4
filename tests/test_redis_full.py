"""Redis full (maxmemory reached, noeviction): reads still serve, writes say
"storage full" (not "unreachable"), and a registration happens completely or
not at all."""

import pytest
from redis.exceptions import OutOfMemoryError

from service.accounts.store import AccountStore
from tests.support.api import PASSWORD, ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env


@pytest.fixture
def stack(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    server = Gunicorn(tmp_path / "gunicorn", base_env(redis_server.url, LOG_FORMAT="text"))
    server.start()
    clients = []

    def client():
        clients.append(ApiClient(server.url))
        return clients[-1]

    yield redis_server, server, client
    for c in clients:
        c.close()
    server.stop()
    redis_server.stop()


def test_a_full_redis_still_serves_reads_and_refuses_writes_as_full(stack):
    redis_server, server, client = stack
    user, newcomer = client(), client()
    assert user.register("reader", PASSWORD).status_code == 201
    assert user.login("reader", PASSWORD).status_code == 200
    newcomer.fetch_csrf()

    with redis_server.client() as db:
        # noeviction is the default policy: every write that needs memory fails.
        db.config_set("maxmemory", 1)
        try:
            for _ in range(5):  # each read's timestamp touch is refused
                me = user.get("/api/me")
                assert me.status_code == 200 and me.json()["username"] == "reader"

            refused = newcomer.register("newcomer", PASSWORD)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "store_full"
            assert "full" in refused.json()["message"]
            assert "unreachable" not in refused.json()["message"]
            assert refused.headers["Retry-After"] == "5"
            # (Here the rate limiter's counter was the first write refused.)
            # The account store's own write, as the view would call it:
            with pytest.raises(OutOfMemoryError):
                AccountStore(db).create("newcomer", "$argon2id$...")
            assert not db.exists("username:newcomer")
            assert not [k for k in db.scan_iter("user:*", count=1000)
                        if db.type(k) == b"hash" and db.hget(k, "username") == b"newcomer"]
        finally:
            db.config_set("maxmemory", 0)

    # Nothing half-made stands in the way once there is room again.
    assert newcomer.register("newcomer", PASSWORD).status_code == 201
    assert newcomer.login("newcomer", PASSWORD).status_code == 200
    log = server.stdout()
    assert "Redis is full" in log and "Redis unavailable" not in log
    assert "Redis is full, session not touched" in log  # the skipped idle renewal
    assert "Traceback" not in log


def test_a_refused_session_save_is_a_503_that_changes_nothing(stack):
    """The session loads (a read), its save is the first write refused: the
    answer says "full", no cookie is set and the record is as it was."""
    redis_server, server, client = stack
    user = client()
    assert user.register("saver", PASSWORD).status_code == 201
    assert user.login("saver", PASSWORD).status_code == 200
    sid = user.sid
    with redis_server.client() as db:
        before = db.hgetall(f"session:{sid}")
        assert before
        db.config_set("maxmemory", 1)
        try:
            refused = user.http.post(server.url + "/test/session", json={"cart": 1}, timeout=10,
                                     headers={"Accept": "application/json"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "store_full"
            assert refused.headers["Retry-After"] == "5"
            assert "Set-Cookie" not in refused.headers
            assert "Traceback" not in refused.text
            assert db.hgetall(f"session:{sid}") == before
        finally:
            db.config_set("maxmemory", 0)
    assert user.sid == sid
    data = user.get("/test/session").json()
    assert "cart" not in data and data["uid"]
    assert user.post("/test/session", {"cart": 2}).status_code == 200
    assert user.get("/test/session").json()["cart"] == 2
    log = server.stdout()
    assert "Redis is full" in log and "Traceback" not in log
