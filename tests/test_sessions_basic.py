"""Session data lives in Redis; the cookie carries only the opaque id."""

import re

import requests


def session_keys(redis_server):
    with redis_server.client() as r:
        return set(r.scan_iter("session:*"))


def test_session_data_is_in_redis_and_the_cookie_holds_only_the_id(service, redis_server):
    secret = "account-number-DE89-3704-0044"
    r = requests.post(service.url + "/test/session", json={"secret": secret}, timeout=5)
    assert r.status_code == 200

    set_cookie = r.headers["Set-Cookie"]
    sid = r.cookies["session"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sid)  # 256 random bits, nothing else
    assert secret not in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    assert "Expires" not in set_cookie and "Max-Age" not in set_cookie

    with redis_server.client() as db:
        stored = db.hgetall(f"session:{sid}")
        ttl = db.pttl(f"session:{sid}")
    assert secret.encode() in stored[b"d:secret"]
    assert b"m:created" in stored
    assert 0 < ttl <= 3600 * 1000  # SESSION_IDLE_TIMEOUT, not Flask's 31 days

    again = requests.get(service.url + "/test/session", cookies={"session": sid}, timeout=5)
    assert again.json() == {"secret": secret}
    assert "Set-Cookie" not in again.headers  # reading does not re-issue the cookie
    assert again.headers["Cache-Control"] == "no-store"
    assert "Cookie" in again.headers["Vary"]


def test_requests_that_never_write_the_session_set_no_cookie_and_no_key(service, redis_server):
    before = session_keys(redis_server)
    for path in ("/", "/healthz", "/readyz", "/test/session", "/static/app.css", "/nope"):
        r = requests.get(service.url + path, timeout=5)
        assert "Set-Cookie" not in r.headers, path
    # Even with a cookie for a session that does not exist.
    r = requests.get(service.url + "/test/session", cookies={"session": "x" * 43}, timeout=5)
    assert "Set-Cookie" not in r.headers
    assert session_keys(redis_server) == before


def session_commands(db) -> dict:
    """How often Redis ran the commands a session load or save sends."""
    stats = db.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("hgetall", "evalsha", "eval")}


def test_a_request_that_never_reads_the_session_costs_no_redis_round_trip(
        service, redis_server):
    written = requests.post(service.url + "/test/session", json={"k": 1}, timeout=5)
    cookies = {"session": written.cookies["session"]}
    with redis_server.client() as db:
        before = session_commands(db)
        for path in ("/healthz", "/static/app.css", "/nope"):
            requests.get(service.url + path, cookies=cookies, timeout=5)
        assert session_commands(db) == before
        # The positive control: a view that reads it loads it.
        assert requests.get(service.url + "/test/session", cookies=cookies,
                            timeout=5).json() == {"k": 1}
        assert session_commands(db)["hgetall"] > before["hgetall"]


def test_responses_that_do_not_read_the_session_are_cacheable(service):
    r = requests.get(service.url + "/healthz", timeout=5)
    assert "no-store" not in r.headers.get("Cache-Control", "")
    assert "Cookie" not in r.headers.get("Vary", "")
    # The start page looks at the (empty) session: it varies by cookie, but
    # an anonymous visitor's copy holds nothing personal.
    home = requests.get(service.url + "/", timeout=5)
    assert "Cookie" in home.headers["Vary"]
    assert "no-store" not in home.headers.get("Cache-Control", "")


def test_foreign_or_forged_session_data_is_never_decoded(service, redis_server, tmp_path):
    sid = "F" * 43
    marker = tmp_path / "pwned-by-session"
    with redis_server.client() as db:
        # A pickle that would run `touch` if anything unpickled it.
        db.set(f"session:{sid}", f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
        try:
            r = requests.get(service.url + "/test/session", cookies={"session": sid}, timeout=5)
            assert r.status_code == 200
            assert r.json() == {}
            assert not marker.exists()
        finally:
            db.delete(f"session:{sid}")
