"""The server decides when a session lives and dies: rotation, logout races,
timeouts, revocation, concurrency, and data it did not write."""

import os
import pickle
import threading
import time

import pytest

from service.session_store import SessionStore
from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import base_env


def session_key(sid):
    return f"session:{sid}"


def test_login_rotates_the_session_id(api, account, redis_server):
    username, password = account
    client = api()
    # An anonymous session with a record of its own (more than a CSRF secret,
    # which would only be a pre-session in the cookie).
    assert client.post("/test/session", {"cart": 1}).status_code == 200
    before = client.sid
    assert SessionStore.is_id(before)
    with redis_server.client() as db:
        assert db.exists(session_key(before))
    assert client.login(username, password).status_code == 200
    after = client.sid
    assert SessionStore.is_id(after) and after != before
    with redis_server.client() as db:
        assert not db.exists(session_key(before))
        assert db.exists(session_key(after))
    # Someone holding the pre-login id (fixation) gets nothing.
    fixated = api()
    fixated.http.cookies.set("session", before)
    assert fixated.get("/api/me").status_code == 401
    assert fixated.get("/test/session").json() == {}


def test_password_change_rotates_the_id_and_ends_other_sessions(api, account, redis_server):
    username, password = account
    client, other = api(), api()
    client.login(username, password)
    other.login(username, password)
    before = client.sid
    r = client.post("/api/auth/password",
                    {"current_password": password, "new_password": "a brand new one"})
    assert r.status_code == 204
    assert client.sid != before
    assert client.get("/api/me").status_code == 200
    # The CSRF token the client holds still works on the new id.
    assert client.post("/api/sessions/revoke-others").status_code == 204
    stale = api()
    stale.http.cookies.set("session", before)
    assert stale.get("/api/me").status_code == 401
    assert other.get("/api/me").status_code == 401
    with redis_server.client() as db:
        assert not db.exists(session_key(before))
        assert not db.exists(session_key(other.sid))


def test_a_request_in_flight_during_logout_cannot_bring_the_session_back(
        api, account, service, redis_server):
    username, password = account
    client = api()
    client.login(username, password)
    sid = client.sid
    result = {}

    def slow():
        # Same cookie, loads the session now, writes to it 1.5 s later.
        r = client.http.post(service.url + "/test/slow-write", timeout=10,
                             json={"seconds": 1.5, "key": "late", "value": "write"})
        result["status"] = r.status_code
        result["set_cookie"] = r.headers.get("Set-Cookie", "")
        result["before"] = r.json()["before"]

    in_flight = threading.Thread(target=slow)
    in_flight.start()
    time.sleep(0.5)
    assert client.logout().status_code == 204
    in_flight.join(10)

    assert result["status"] == 200
    assert result["before"]["uid"]  # it really had the logged-in session loaded
    # The late write did not resurrect the session nor re-issue its cookie
    # (and sends no deletion either: that could hit a newer login's cookie).
    assert result["set_cookie"] == ""
    with redis_server.client() as db:
        assert not db.exists(session_key(sid))
    old = api()
    old.http.cookies.set("session", sid)
    assert old.get("/api/me").status_code == 401
    with redis_server.client() as db:
        assert not db.exists(session_key(sid))


def test_logout_sends_a_deletion_cookie_browsers_honour(api, account):
    username, password = account
    client = api()
    client.login(username, password)
    r = client.logout()
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("session=;")
    for attribute in ("Max-Age=0", "Path=/", "HttpOnly", "SameSite=Lax"):
        assert attribute in cookie


def test_concurrent_requests_keep_each_others_writes_to_different_keys(
        api, account, service, redis_server):
    """The slow request loaded `shared` before the fast one changed it; its
    save writes only the key it changed, never its stale copy of the others."""
    username, password = account
    client = api()
    client.login(username, password)

    def write(key, value, seconds):
        r = client.http.post(service.url + "/test/slow-write", timeout=10,
                             json={"seconds": seconds, "key": key, "value": value})
        assert r.status_code == 200

    for round_ in range(4):
        assert client.post("/test/session", {"shared": "old"}).status_code == 200
        threads = [threading.Thread(target=write, args=(f"slow{round_}", "S", 0.6)),
                   threading.Thread(target=write, args=("shared", f"new{round_}", 0.2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        data = client.get("/test/session").json()
        assert data["shared"] == f"new{round_}", data
        assert data[f"slow{round_}"] == "S" and data["uid"]


def timed_sessions(redis_server, make_gunicorn, absolute):
    env = base_env(redis_server.url, SESSION_IDLE_TIMEOUT=2, SESSION_ABSOLUTE_TIMEOUT=absolute,
                   AUTH_RATE_LIMIT="1000 per minute")
    server = make_gunicorn(env).start()
    clients = []

    def make():
        client = ApiClient(server.url)
        clients.append(client)
        return client

    username = new_username()
    assert make().register(username, PASSWORD).status_code == 201
    yield make, username
    for client in clients:
        client.close()


@pytest.fixture
def short_lived(redis_server, make_gunicorn):
    """Idle timeout 2 s, absolute timeout 4 s."""
    yield from timed_sessions(redis_server, make_gunicorn, 4)


@pytest.fixture
def idle_only(redis_server, make_gunicorn):
    """Idle timeout 2 s; the absolute timeout (30 s) never comes into play."""
    yield from timed_sessions(redis_server, make_gunicorn, 30)


def test_idle_timeout_ends_a_quiet_session(idle_only, redis_server):
    make, username = idle_only
    client = make()
    client.login(username, PASSWORD)
    with redis_server.client() as db:
        assert 0 < db.pttl(session_key(client.sid)) <= 2000
    time.sleep(1.2)
    assert client.get("/api/me").status_code == 200  # activity slides the idle timeout
    time.sleep(1.2)
    assert client.get("/api/me").status_code == 200  # 2.4 s after login: it slid
    with redis_server.client() as db:
        assert 1000 < db.pttl(session_key(client.sid)) <= 2000  # renewed to the idle timeout
    time.sleep(2.5)
    assert client.get("/api/me").status_code == 401
    with redis_server.client() as db:
        assert not db.exists(session_key(client.sid))


def poll_me(client, started, until):
    """GET /api/me every 0.5 s until `until` s after `started`: (alive, dead) times."""
    statuses = []
    while time.monotonic() - started < until:
        statuses.append((round(time.monotonic() - started, 1), client.get("/api/me").status_code))
        time.sleep(0.5)
    alive = [t for t, status in statuses if status == 200]
    dead = [t for t, status in statuses if status == 401]
    assert alive and dead, statuses
    return alive, dead


def test_absolute_timeout_ends_even_an_active_session(short_lived):
    make, username = short_lived
    client = make()
    client.login(username, PASSWORD)
    alive, dead = poll_me(client, time.monotonic(), 5.5)
    assert max(alive) < 4.1 <= min(dead) + 0.5, (alive, dead)  # ends at 4 s despite activity
    assert min(dead) > max(alive)  # and stays ended


def test_password_change_does_not_extend_the_absolute_timeout(short_lived):
    make, username = short_lived
    client = make()
    client.login(username, PASSWORD)
    started = time.monotonic()
    time.sleep(1.5)
    r = client.post("/api/auth/password",
                    {"current_password": PASSWORD, "new_password": "another good one"})
    assert r.status_code == 204
    alive, dead = poll_me(client, started, 5.5)
    # Still 4 s from login, not from the password change (which would be 5.5 s).
    assert max(alive) < 4.1 <= min(dead) + 0.5, (alive, dead)


def test_revocation_ends_exactly_the_right_sessions(api, account):
    username, password = account
    a, b, c = api(), api(), api()
    for client in (a, b, c):
        assert client.login(username, password).status_code == 200
    stranger_name = new_username()
    stranger = api()
    stranger.register(stranger_name, PASSWORD)
    stranger.login(stranger_name, PASSWORD)

    listed = a.get("/api/sessions").json()["sessions"]
    assert len(listed) == 3
    b_handle = next(s["handle"] for s in b.get("/api/sessions").json()["sessions"]
                    if s["current"])
    # Revoke one: only b ends.
    assert a.delete(f"/api/sessions/{b_handle}").status_code == 204
    assert [x.get("/api/me").status_code for x in (a, b, c)] == [200, 401, 200]
    # Someone else's handle is not ours to end.
    stranger_handle = stranger.get("/api/sessions").json()["sessions"][0]["handle"]
    assert a.delete(f"/api/sessions/{stranger_handle}").status_code == 404
    # Revoke others: c ends, a stays; the stranger is untouched.
    assert a.post("/api/sessions/revoke-others").status_code == 204
    assert [x.get("/api/me").status_code for x in (a, b, c)] == [200, 401, 401]
    assert stranger.get("/api/me").status_code == 200
    assert [s["current"] for s in a.get("/api/sessions").json()["sessions"]] == [True]


def test_account_deletion_ends_all_its_sessions(api, account, redis_server):
    username, password = account
    a, b = api(), api()
    a.login(username, password)
    b.login(username, password)
    sids = (a.sid, b.sid)
    assert a.delete("/api/account", {"password": password}).status_code == 204
    assert a.get("/api/me").status_code == 401
    assert b.get("/api/me").status_code == 401
    with redis_server.client() as db:
        assert not any(db.exists(session_key(s)) for s in sids)
        assert not list(db.scan_iter(f"username:{username}"))


def test_expired_sessions_drop_out_of_the_index(api, account, redis_server):
    username, password = account
    a, b = api(), api()
    a.login(username, password)
    b.login(username, password)
    with redis_server.client() as db:
        db.delete(session_key(b.sid))  # as if its TTL ran out
    listed = a.get("/api/sessions").json()["sessions"]
    assert len(listed) == 1 and listed[0]["current"]
    uid = a.get("/test/session").json()["uid"]
    with redis_server.client() as db:
        assert db.hlen(f"user:{uid}:sessions") == 1


@pytest.mark.parametrize("shape", ["string", "hash"])
def test_a_crafted_pickle_in_redis_is_never_executed(service, redis_server, tmp_path, api, shape):
    marker = tmp_path / f"pwned-{shape}"
    payload = pickle.dumps(_Exploit(str(marker)))
    sid = ("P" if shape == "string" else "Q") * 43
    with redis_server.client() as db:
        if shape == "string":  # Flask-Session's own format: one blob
            db.set(session_key(sid), payload)
        else:  # our format, with a pickle where msgpack belongs
            db.hset(session_key(sid), mapping={"m:created": int(time.time() * 1000),
                                               "d:uid": payload})
    client = api()
    client.http.cookies.set("session", sid)
    r = client.get("/test/session")
    assert r.status_code == 200 and r.json() == {}  # a fresh anonymous session
    assert client.get("/api/me").status_code == 401
    assert not marker.exists()
    # Writing now lands under a new id; the planted key is not reused.
    written = client.http.post(service.url + "/test/session", json={"k": "v"}, timeout=5)
    assert written.cookies["session"] != sid
    with redis_server.client() as db:
        db.delete(session_key(sid))


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_sensitive_session_data_never_reaches_a_cookie(api, account, redis_server):
    username, password = account
    client = api()
    client.fetch_csrf()
    login = client.login(username, password)
    number = client.get("/api/me").json()["account_number"]
    set_cookies = login.headers.get("Set-Cookie", "")
    assert number not in set_cookies and username not in set_cookies
    for cookie in client.http.cookies:
        assert number not in cookie.value
    with redis_server.client() as db:
        stored = db.hgetall(session_key(client.sid))
    assert number.encode() in stored[b"d:account_number"]
