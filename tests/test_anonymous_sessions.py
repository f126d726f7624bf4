"""Anonymous visitors cost Redis nothing: the CSRF secret of a visitor with
nothing else stored lives in a signed cookie (service/presessions.py), and new
session records of visitors who are not logged in are limited per address."""

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import DefaultCookiePolicy

import pytest
import requests

from service import Settings, create_app
from service.presessions import PreSessions
from service.session_store import SessionStore
from tests.support.api import PASSWORD, ApiClient
from tests.support.processes import Gunicorn, RedisServer, base_env

# What one client sent in the assessment: 3,000 GET /api/csrf without a
# cookie; the forms' pages hand out a token too.
FLOOD = {"/api/csrf": 3000, "/login": 300, "/register": 300}
FLOOD_SECONDS = 60


@pytest.fixture
def stack(tmp_path):
    """A Redis of this test's own (its DBSIZE and memory are this test's
    alone) and one gevent worker."""
    redis_server = RedisServer(tmp_path / "redis").start()
    server = Gunicorn(tmp_path / "gunicorn",
                      base_env(redis_server.url, ANONYMOUS_SESSION_LIMIT="30 per minute"))
    server.start()
    yield redis_server, server
    server.stop()
    redis_server.stop()


def cookieless_flood(base_url, paths):
    """GET each path without ever sending a cookie, 8 at a time, with
    keep-alive, for at most FLOOD_SECONDS; returns the statuses (a path not
    sent by then is missing from them)."""
    deadline = time.monotonic() + FLOOD_SECONDS

    def worker(chunk):
        with requests.Session() as http:
            http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # keep none
            return [http.get(base_url + path, timeout=10).status_code for path in chunk
                    if time.monotonic() < deadline]

    chunks = [paths[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        return [status for statuses in pool.map(worker, chunks) for status in statuses]


def footprint(db):
    return db.dbsize(), db.info("memory")["used_memory"]


def test_an_anonymous_flood_leaves_redis_unchanged(stack):
    redis_server, server = stack
    user = ApiClient(server.url)
    assert user.register("resident", PASSWORD).status_code == 201
    assert user.login("resident", PASSWORD).status_code == 200
    paths = [path for path, count in FLOOD.items() for _ in range(count)]
    cookieless_flood(server.url, paths[:50])  # warm: the worker's Redis pool is open
    with redis_server.client() as db:
        keys_before, memory_before = footprint(db)
        statuses = cookieless_flood(server.url, paths)
        keys_after, memory_after = footprint(db)
    assert statuses == [200] * len(paths)
    # Before: one session key per request (358 bytes each, 1 h TTL).
    assert keys_after == keys_before, (keys_before, keys_after)
    assert memory_after - memory_before < 100_000, (memory_before, memory_after)
    # The resident's session and account are untouched.
    assert user.get("/api/me").json()["username"] == "resident"
    user.close()


def test_a_full_redis_still_hands_out_csrf_tokens(stack):
    redis_server, server = stack
    visitor = ApiClient(server.url)
    with redis_server.client() as db:
        db.config_set("maxmemory", 1)  # noeviction: every growing write fails
        try:
            for path in ("/api/csrf", "/login", "/register"):
                assert requests.get(server.url + path, timeout=5).status_code == 200, path
            token = visitor.fetch_csrf()
            assert token
            # The token works (a request without it is refused: the control).
            refused = visitor.post("/api/auth/logout", csrf=False)
            assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"
            assert visitor.post("/api/auth/logout").status_code == 204
        finally:
            db.config_set("maxmemory", 0)
            visitor.close()


def test_new_anonymous_records_are_limited_per_address(stack):
    redis_server, server = stack
    with redis_server.client() as db:
        keys_before = db.dbsize()
    # A visitor who is not logged in and stores something (here the test
    # app's probe; in an app, say, a cart) gets a record: 30 per minute.
    writes = [requests.post(server.url + "/test/session", json={"cart": n}, timeout=5)
              for n in range(40)]
    assert [r.status_code for r in writes] == [200] * 30 + [429] * 10
    refused = writes[-1]
    assert refused.json() == {"error": "rate_limited", "message":
                              "Too many new sessions from your address; please retry later."}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Set-Cookie" not in refused.headers
    with redis_server.client() as db:
        assert db.dbsize() - keys_before <= 30 + 1  # the records and the limit's counter
    # Another address is not affected.
    other = requests.post(server.url + "/test/session", json={"cart": 1}, timeout=5,
                          headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200
    # Nor is logging in from the limited address: a login is limited by
    # AUTH_RATE_LIMIT before its password check, not by this.
    user = ApiClient(server.url)
    assert user.register("limited-but-welcome", PASSWORD).status_code == 201
    assert user.login("limited-but-welcome", PASSWORD).status_code == 200
    assert user.get("/api/me").status_code == 200
    user.close()
    assert "Traceback" not in server.stdout() + server.stderr()



def test_every_limit_of_the_setting_counts(tmp_path, redis_server):
    """`check` accepts several limits ("50 per minute;5 per hour"): the
    stricter second one holds too, not only the first."""
    server = Gunicorn(tmp_path / "gunicorn", base_env(
        redis_server.url, ANONYMOUS_SESSION_LIMIT="50 per minute;5 per hour"))
    server.start()
    try:
        address = {"X-Forwarded-For": "203.0.113.77"}
        statuses = [requests.post(server.url + "/test/session", json={"n": n}, timeout=5,
                                  headers=address).status_code for n in range(8)]
        assert statuses == [200] * 5 + [429] * 3
    finally:
        server.stop()

# -- pre-sessions in process (flaskr's way): the CSRF rules they keep ------------------

def token_of(client) -> str:
    r = client.get("/api/csrf")
    assert r.status_code == 200
    return r.json["csrf_token"]


def protected(client, token):
    """A CSRF-protected request that stores nothing (a logout without a
    login): 204 when the token is accepted, 403 csrf_failed when not."""
    return client.post("/api/auth/logout", headers={"X-CSRF-Token": token})


def test_a_token_for_a_visitor_needs_no_record(client, redis_server):
    with redis_server.client() as db:
        keys_before = db.dbsize()
        token = token_of(client)
        cookie = client.get_cookie("session").value
        assert not SessionStore.is_id(cookie)  # a pre-session, no record's id
        assert not db.exists(f"session:{cookie}")
        assert protected(client, token).status_code == 204
        assert db.dbsize() <= keys_before  # (other tests' short sessions may expire)
    # The same cookie, the same secret: a second token works too.
    assert protected(client, token_of(client)).status_code == 204


def test_a_pre_session_token_works_only_with_its_own_cookie(app, redis_server):
    mine, theirs = app.test_client(), app.test_client()
    my_token, their_token = token_of(mine), token_of(theirs)
    r = protected(mine, their_token)
    assert r.status_code == 403 and r.json["error"] == "csrf_failed"
    assert protected(mine, my_token).status_code == 204
    # A cookie changed by one character, or signed with another SECRET_KEY,
    # is no pre-session: the token has nothing to match.
    cookie = mine.get_cookie("session").value
    forged = app.test_client()
    # (Not the last character: base64's last one carries padding bits, so
    # some changes there decode to the same signature.)
    forged.set_cookie("session", cookie[:-5] + ("A" if cookie[-5] != "A" else "B") + cookie[-4:])
    assert protected(forged, my_token).status_code == 403
    other_key = PreSessions("another secret key " * 3, 3600, 43200).issue()
    forged.set_cookie("session", other_key.cookie)
    assert protected(forged, my_token).status_code == 403


def test_login_rotates_away_from_the_pre_session_and_renews_the_secret(app, redis_server):
    client = app.test_client()
    with app.app_context():
        from service.accounts import register
        register(name := f"pre-{secrets.token_hex(4)}", PASSWORD)
    before = token_of(client)
    pre_cookie = client.get_cookie("session").value
    login = client.post("/api/auth/login", json={"username": name, "password": PASSWORD},
                        headers={"X-CSRF-Token": before})
    assert login.status_code == 200
    sid = client.get_cookie("session").value
    assert SessionStore.is_id(sid) and sid != pre_cookie
    with redis_server.client() as db:
        assert db.exists(f"session:{sid}")
    # The pre-login token is dead; the one login handed out works.
    stale = client.post("/api/sessions/revoke-others", headers={"X-CSRF-Token": before})
    assert stale.status_code == 403
    fresh = client.post("/api/sessions/revoke-others",
                        headers={"X-CSRF-Token": login.json["csrf_token"]})
    assert fresh.status_code == 204
    # Someone holding the pre-session cookie is not logged in.
    fixated = app.test_client()
    fixated.set_cookie("session", pre_cookie)
    assert fixated.get("/api/me").status_code == 401


def test_pre_sessions_keep_the_idle_and_absolute_timeouts(redis_server):
    settings = Settings.from_env(base_env(
        redis_server.url, SESSION_IDLE_TIMEOUT=4, SESSION_ABSOLUTE_TIMEOUT=8,
        AUTH_RATE_LIMIT="1000 per minute", LOGIN_FAILURE_LIMIT="1000 per minute"))
    app = create_app(settings)
    active, idle = app.test_client(), app.test_client()
    active_token, idle_token = token_of(active), token_of(idle)
    started = time.monotonic()

    def at(seconds):
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    at(2.5)  # past half the idle timeout: a use signs the cookie anew
    r = active.get("/api/csrf")
    assert r.json["csrf_token"] and "session=" in r.headers["Set-Cookie"]
    at(5.5)  # idle for 5.5 s > 4 s: ended; used 3 s ago: alive (and signed anew)
    assert protected(idle, idle_token).status_code == 403
    assert "session=" in active.get("/api/csrf").headers["Set-Cookie"]
    assert protected(active, active_token).status_code == 204
    at(9.0)  # 9 s after it was issued > 8 s, however active
    assert protected(active, active_token).status_code == 403
    app.extensions["redis"].connection_pool.disconnect()


def test_storing_more_than_a_csrf_secret_makes_a_record_that_keeps_it(api, redis_server):
    client = api()
    token = client.fetch_csrf()
    pre_cookie = client.sid
    stored = client.http.post(client.base + "/test/session", json={"cart": [1, 2]}, timeout=5)
    sid = client.sid
    assert stored.status_code == 200 and SessionStore.is_id(sid) and sid != pre_cookie
    with redis_server.client() as db:
        assert db.hexists(f"session:{sid}", "d:csrf_token")
    assert client.http.get(client.base + "/test/session", timeout=5).json()["cart"] == [1, 2]
    # The token handed out before the record existed still works.
    assert client.post("/api/auth/logout", headers={"X-CSRF-Token": token}).status_code == 204


def test_through_nginx_a_cookieless_flood_adds_no_key_and_the_token_works(
        nginx_front, redis_server):
    """The production shape: nginx (TLS, the production render), gunicorn
    with APP_ENV=production, the __Host- cookie."""
    nginx, _ = nginx_front()
    with redis_server.client() as db:
        keys_before = db.dbsize()
        urls = [nginx.url(path) for path in ("/api/csrf", "/login", "/register") * 300]
        each = [arg for url in urls for arg in ("-o", "/dev/null", url)]  # one connection
        flood = nginx.curl("-s", "-w", "%{http_code}\\n", *each, timeout=120)
        keys_after = db.dbsize()
    statuses = flood.stdout.split()
    assert len(statuses) == len(urls) and statuses[0] == "200", flood.stderr
    assert set(statuses) <= {"200", "429"}  # (nginx's own per-address limits may answer)
    assert keys_after <= keys_before  # (keys of other tests may expire meanwhile)

    token = nginx.request("GET", "/api/csrf")
    cookie = token.header("Set-Cookie")
    assert cookie.startswith("__Host-session=")
    for attribute in ("Secure", "HttpOnly", "Path=/", "SameSite=Lax"):
        assert attribute in cookie
    sent = {"Cookie": cookie.split(";")[0],
            "X-CSRF-Token": json.loads(token.body)["csrf_token"]}
    assert nginx.request("POST", "/api/auth/logout", headers=sent).status == 204
    forged = dict(sent, Cookie="__Host-session=" + PreSessions("x" * 48, 60, 60).issue().cookie)
    assert nginx.request("POST", "/api/auth/logout", headers=forged).status == 403


def test_a_pre_session_ends_at_its_absolute_timeout_however_renewed():
    key = "k" * 48
    pre_sessions = PreSessions(key, idle_timeout=2, absolute_timeout=3)
    first = pre_sessions.issue()
    time.sleep(1.1)  # past half the idle timeout
    renewed = pre_sessions.renewed(pre_sessions.open(first.cookie))
    assert renewed is not None and renewed.cookie != first.cookie
    assert pre_sessions.csrf_secret(renewed) == pre_sessions.csrf_secret(first)  # same tokens
    assert pre_sessions.open(renewed.cookie) is not None
    time.sleep(2.1)  # 3.2 s since it was issued
    # Judged with a long idle timeout, so only the absolute one can end it:
    # renewal keeps the issue time, a client cannot sign its way past it.
    assert PreSessions(key, 60, 3).open(renewed.cookie) is None
    assert PreSessions(key, 60, 60).open(renewed.cookie) is not None
