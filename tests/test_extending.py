"""README.md's "Extending it", run: the example blueprint (examples/notes) on
the kit's app, and an existing app wrapped with init_kit
(examples/outside_app.py), against real redis-servers."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
import redis

from examples import outside_app
from examples.notes import COUNTER, INBOX
from examples.notes import bp as notes_bp
from service import Settings
from tests.support.processes import RedisServer, base_env

WEBHOOK_SECRET = "a-test-secret-for-the-webhook-signature"


@pytest.fixture
def notes_app(app):
    app.register_blueprint(notes_bp)
    app.config["NOTES_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    return app


def form_token(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_the_notes_page_takes_a_form_with_its_csrf_token(notes_app):
    client = notes_app.test_client()
    db = notes_app.extensions["redis"]
    page = client.get("/notes/")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    token = form_token(page.text)

    refused = client.post("/notes/", data={"text": "no token"})
    assert refused.status_code == 403 and "csrf" in refused.text.lower()

    before = int(db.get(COUNTER) or 0)
    saved = client.post("/notes/", data={"text": "buy milk", "csrf_token": token})
    assert saved.status_code == 303
    page = client.get("/notes/")
    assert "<li>buy milk</li>" in page.text
    assert int(db.get(COUNTER)) == before + 1
    # In the server-side session: the cookie holds only the id.
    assert "buy milk" not in client.get_cookie("session").value


def test_the_json_route_wants_the_token_in_x_csrf_token_and_is_rate_limited(notes_app):
    client = notes_app.test_client()
    refused = client.post("/notes/api", json={"text": "no token"})
    assert refused.status_code == 403
    assert refused.json["error"] == "csrf_failed"

    token = client.get("/api/csrf").json["csrf_token"]
    headers = {"X-CSRF-Token": token}
    added = client.post("/notes/api", json={"text": "first"}, headers=headers)
    assert added.status_code == 201 and added.json == {"notes": ["first"]}
    again = client.post("/notes/api", json={"text": "second"}, headers=headers)
    assert again.json == {"notes": ["first", "second"]}  # the same session
    assert client.post("/notes/api", json={"text": ""}, headers=headers).status_code == 422

    # 30 per minute per address: 3 used above, 27 more pass, then 429.
    statuses = [client.post("/notes/api", json={"text": "x"}, headers=headers).status_code
                for _ in range(28)]
    assert statuses[:27] == [201] * 27
    assert statuses[27] == 429


def test_the_webhook_skips_csrf_and_checks_its_signature_instead(notes_app):
    client = notes_app.test_client()
    db = notes_app.extensions["redis"]
    body = b'{"text": "from the other server"}'
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    before = db.llen(INBOX)

    accepted = client.post("/notes/webhook", data=body, content_type="application/json",
                           headers={"X-Signature": signature})
    assert accepted.status_code == 204
    assert db.lindex(INBOX, -1) == body
    for wrong in ("", "sha256=" + "0" * 64, signature.upper()):
        refused = client.post("/notes/webhook", data=body, content_type="application/json",
                              headers={"X-Signature": wrong})
        assert refused.status_code == 401
    tampered = client.post("/notes/webhook", data=body + b" ", content_type="application/json",
                           headers={"X-Signature": signature})
    assert tampered.status_code == 401
    assert db.llen(INBOX) == before + 1


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test alone: it is stopped in the middle."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_an_outside_app_gets_headers_sessions_and_503_on_redis_loss(own_redis):
    app = outside_app.create_app(Settings.from_env(base_env(own_redis.url)))
    client = app.test_client()
    try:
        home = client.get("/", headers={"X-Request-ID": "from-the-proxy-1"})
        assert home.status_code == 200
        assert "default-src 'none'" in home.headers["Content-Security-Policy"]
        assert home.headers["X-Frame-Options"] == "DENY"
        assert home.headers["X-Content-Type-Options"] == "nosniff"
        assert home.headers["Referrer-Policy"] == "same-origin"
        # The test client's address (127.0.0.1) is a trusted proxy: its id is kept.
        assert home.headers["X-Request-ID"] == "from-the-proxy-1"
        assert "Set-Cookie" not in home.headers  # no session touched, none made

        assert client.get("/visits").json == {"visits": 1}
        second = client.get("/visits")
        assert second.json == {"visits": 2}
        assert second.headers["Cache-Control"] == "no-store"
        sid = client.get_cookie("session").value
        with own_redis.client() as db:
            assert db.exists(f"session:{sid}") == 1
        assert "visits" not in sid

        own_redis.stop()
        lost = client.get("/visits", headers={"Accept": "application/json"})
        assert lost.status_code == 503
        assert lost.headers["Retry-After"] == "5"
        assert lost.json["error"] == "store_unavailable"
        page = client.get("/visits", headers={"Accept": "text/html"})
        assert page.status_code == 503
        assert "<h1>503 Service Unavailable</h1>" in page.text  # the kit's error page
        assert client.get("/").status_code == 200  # pages without a session still serve
    finally:
        for value in app.extensions.values():
            if isinstance(value, redis.Redis):
                value.connection_pool.disconnect()
