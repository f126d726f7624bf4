"""The redis+sentinel:// form of REDIS_URL and REDIS_WAIT_REPLICAS, in process.
(Failover itself is proven on real hosts in tests/test_scaling.py.)"""

from __future__ import annotations

import secrets

import pytest
import redis
from limits._storage_scheme import parse_storage_uri

from service import Settings, create_app
from service.redis_url import parse_sentinel_url
from tests.support.api import PASSWORD, new_username
from tests.support.processes import base_env

URL = "redis+sentinel://app:p%40ss@10.0.0.1:26379,sentinel-2:26380,[fd00::3]:26379/mymaster"


@pytest.mark.parametrize("db", ["", "/5"])
def test_reads_the_url_as_the_limits_library_does(db):
    """The sentinels, service name and credentials are what Flask-Limiter's
    storage (limits) reads from the same URL; the kit adds an optional db."""
    ours = parse_sentinel_url(URL + db)
    theirs = parse_storage_uri(URL)
    assert list(ours.sentinels) == theirs.locations
    assert (ours.username, ours.password) == ("app", "p@ss")
    assert ours.username == theirs.username
    assert ours.service_name == theirs.path.replace("/", "") == "mymaster"
    assert ours.db == (5 if db else 0)


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel://10.0.0.1/mymaster", "needs host:port"),
    ("redis+sentinel://10.0.0.1:26379", "the path must be"),
    ("redis+sentinel://10.0.0.1:26379/mymaster/zero", "the path must be"),
])
def test_a_malformed_sentinel_url_is_a_settings_problem(url, why):
    settings = Settings.from_env(base_env(url))
    assert any(why in p and "redis+sentinel://[user:password@]" in p
               for p in settings.problems), settings.problems


def test_the_password_of_a_sentinel_url_is_masked():
    settings = Settings.from_env(base_env(URL + "/0"))
    assert settings.problems == ()
    redacted = settings.redacted()
    assert redacted["redis_url"] == URL.replace("p%40ss", "***") + "/0"
    assert "p%40ss" not in str(redacted) and "p@ss" not in str(redacted)


def test_wait_timeout_must_be_shorter_than_the_socket_timeout(redis_server):
    settings = Settings.from_env(base_env(redis_server.url, REDIS_WAIT_REPLICAS=1,
                                          REDIS_WAIT_TIMEOUT=2, REDIS_SOCKET_TIMEOUT=2))
    assert any("REDIS_WAIT_TIMEOUT must be shorter" in p for p in settings.problems)


@pytest.fixture
def make_app(redis_server):
    apps = []

    def make(**env):
        app = create_app(Settings.from_env(base_env(
            redis_server.url, AUTH_RATE_LIMIT="1000 per minute", **env)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        for client in app.extensions.values():
            if isinstance(client, redis.Redis):
                client.connection_pool.disconnect()


def login(app):
    client = app.test_client()
    username = new_username()
    token = client.get("/api/csrf").json["csrf_token"]
    assert client.post("/api/auth/register", json={"username": username, "password":
                       "correct horse battery"}, headers={"X-CSRF-Token": token}).status_code == 201
    token = client.get("/api/csrf").json["csrf_token"]
    return client.post("/api/auth/login", json={"username": username, "password":
                       "correct horse battery"}, headers={"X-CSRF-Token": token})


def test_a_login_no_replica_confirmed_is_a_503_without_a_cookie(make_app):
    """The test Redis has no replica: WAIT 1 times out, so the login is not
    acknowledged: 503 with Retry-After, and no session cookie."""
    response = login(make_app(REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT=0.1))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json["error"] == "store_unavailable"
    assert "Set-Cookie" not in response.headers


def test_without_wait_the_same_login_succeeds(make_app):
    response = login(make_app(REDIS_WAIT_REPLICAS=0))
    assert response.status_code == 200
    assert "Set-Cookie" in response.headers



# Every operation README promises REDIS_WAIT_REPLICAS for, besides login.
ENDING = {
    "logout": ("POST", "/api/auth/logout", None),
    "revoke one session": ("DELETE", "/api/sessions/{other}", None),
    "revoke the others": ("POST", "/api/sessions/revoke-others", None),
    "password change": ("POST", "/api/auth/password",
                        {"current_password": PASSWORD, "new_password": "another good one"}),
    "account deletion": ("DELETE", "/api/account", {"password": PASSWORD}),
}


@pytest.mark.parametrize("operation", ENDING)
def test_an_operation_that_ends_sessions_no_replica_confirmed_is_a_503(make_app, operation):
    """Two sessions of one user made on an app that does not wait; the
    operation on one that waits for a replica (there is none): 503 with
    Retry-After, and no cookie or Clear-Site-Data the client would act on."""
    key = secrets.token_urlsafe(48)
    plain = make_app(REDIS_WAIT_REPLICAS=0, SECRET_KEY=key)
    waiting = make_app(REDIS_WAIT_REPLICAS=1, REDIS_WAIT_TIMEOUT=0.1, SECRET_KEY=key)
    username = new_username()
    credentials = {"username": username, "password": PASSWORD}
    sids = []
    for _ in range(2):
        client = plain.test_client()
        token = client.get("/api/csrf").json["csrf_token"]
        if not sids:
            assert client.post("/api/auth/register", json=credentials,
                               headers={"X-CSRF-Token": token}).status_code == 201
        login = client.post("/api/auth/login", json=credentials, headers={"X-CSRF-Token": token})
        assert login.status_code == 200
        sids.append(client.get_cookie("session").value)

    client = waiting.test_client()
    client.set_cookie("session", sids[0])
    listed = client.get("/api/sessions").json["sessions"]
    other = next(s["handle"] for s in listed if not s["current"])
    token = client.get("/api/csrf").json["csrf_token"]
    method, path, body = ENDING[operation]
    response = client.open(path.format(other=other), method=method, json=body,
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 503, response.json
    assert response.headers["Retry-After"]
    assert response.json["error"] == "store_unavailable"
    # The write happened on the primary; the answer says so.
    assert response.json["message"].startswith("The change was made, but no replica")
    assert "Clear-Site-Data" not in response.headers
    if operation != "password change":
        assert "Set-Cookie" not in response.headers
        return
    # The session moved to a new id on the primary, the old one is gone: the
    # client gets the new one, or the change would log it out.
    moved = client.get_cookie("session").value
    assert moved != sids[0]
    assert client.get("/api/me").status_code == 200
