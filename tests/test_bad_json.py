"""Hostile JSON bodies get 400 invalid_json in the usual error shape, on every
route that reads a password, and nothing is logged at ERROR."""

import json

import pytest

from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import Gunicorn, base_env


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    """The default MAX_CONTENT_LENGTH (1 MiB): room for 100,000 levels."""
    env = base_env(redis_server.url, AUTH_RATE_LIMIT="1000 per minute",
                   LOGIN_FAILURE_LIMIT="1000 per minute")
    started = Gunicorn(tmp_path_factory.mktemp("gunicorn"), env).start()
    yield started
    started.stop()


def nested(depth):
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def logged_in(server):
    client = ApiClient(server.url)
    username = new_username()
    assert client.register(username, PASSWORD).status_code == 201
    assert client.login(username, PASSWORD).status_code == 200
    yield client
    client.close()


ROUTES = {
    "/api/auth/login": lambda password: {"username": "someone", "password": password},
    "/api/auth/register": lambda password: {"username": new_username(), "password": password},
    "/api/auth/password": lambda password: {"current_password": PASSWORD,
                                            "new_password": password},
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("body", ["nested 2,000", "nested 100,000", "lone surrogate",
                                  "lone low surrogate"])
def test_hostile_json_is_400_invalid_json(server, logged_in, path, body):
    if body.startswith("nested"):
        data = nested(int(body.split()[1].replace(",", "")))
    else:
        surrogate = "\ud800" if body == "lone surrogate" else "x\udfff"
        data = json.dumps(ROUTES[path](f"{PASSWORD} {surrogate}"))
    r = logged_in.post(path, data=data, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_json"
    assert r.json()["message"]


def test_a_surrogate_pair_is_ordinary_text(server, logged_in):
    # The positive control: an emoji escaped as a pair is a fine password.
    client = ApiClient(server.url)
    username = new_username()
    body = json.dumps({"username": username, "password": f"{PASSWORD} \U0001F600"})
    assert "\\ud83d\\ude00" in body
    r = client.post("/api/auth/register", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert client.login(username, f"{PASSWORD} \U0001F600").status_code == 200
    client.close()


def test_nothing_was_logged_at_error(server, logged_in):
    for path in ROUTES:
        logged_in.post(path, data=nested(100_000), headers={"Content-Type": "application/json"})
    levels = [json.loads(line).get("level") for line in server.stdout().splitlines()
              if line.startswith("{")]
    assert levels and "ERROR" not in levels
    assert "Traceback" not in server.stdout() + server.stderr()
