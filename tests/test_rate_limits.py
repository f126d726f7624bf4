"""Login and registration limits (Flask-Limiter on the same Redis): 429 with
Retry-After, per client address and per account+address, so an attacker
cannot lock a victim out."""

import re
from itertools import pairwise

import pytest

from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import RedisServer, base_env


@pytest.fixture
def limited(tmp_path, make_gunicorn):
    redis_server = RedisServer(tmp_path / "redis").start()
    env = base_env(redis_server.url, AUTH_RATE_LIMIT="6 per minute",
                   LOGIN_FAILURE_LIMIT="3 per minute")
    server = make_gunicorn(env).start()
    clients = []

    def client_from(address):
        client = ApiClient(server.url, forwarded_for=address)
        clients.append(client)
        return client

    yield client_from, redis_server
    for client in clients:
        client.close()
    redis_server.stop()


def test_failed_logins_are_limited_per_account_and_address(limited):
    client_from, redis_server = limited
    victim_name = new_username("victim")
    victim = client_from("198.51.100.10")
    assert victim.register(victim_name, PASSWORD).status_code == 201

    attacker = client_from("203.0.113.66")
    statuses = [attacker.login(victim_name, f"guess {i}").status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    blocked = attacker.login(victim_name, PASSWORD)  # even the right password now
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert blocked.json()["error"] == "rate_limited"

    # The victim, from their own address, is not locked out.
    assert victim.login(victim_name, PASSWORD).status_code == 200
    # And the block is on this account from this address, not on the address:
    # a failure on another account from there is still an ordinary 401.
    other_name = new_username("other")
    assert victim.register(other_name, PASSWORD).status_code == 201
    assert attacker.login(other_name, "a wrong guess").status_code == 401
    with redis_server.client() as db:
        assert list(db.scan_iter("LIMITS:LIMITER/ratelimit/*"))  # counters live in Redis


def test_attempts_are_limited_per_address(limited):
    client_from, _ = limited
    flood = client_from("203.0.113.99")
    statuses = [flood.register(new_username(), PASSWORD).status_code for _ in range(6)]
    assert statuses == [201] * 6
    over = flood.login(new_username(), PASSWORD)  # login and register share the budget
    assert over.status_code == 429
    assert "Retry-After" in over.headers
    assert client_from("203.0.113.100").register(new_username(), PASSWORD).status_code == 201


def test_successful_logins_do_not_use_up_the_failure_budget(limited):
    client_from, _ = limited
    name = new_username()
    assert client_from("198.51.100.20").register(name, PASSWORD).status_code == 201
    statuses = [client_from("198.51.100.21").login(name, PASSWORD).status_code
                for _ in range(5)]
    assert statuses == [200] * 5


def test_password_checks_of_a_logged_in_user_are_limited_per_user(limited):
    client_from, _ = limited
    name = new_username()
    owner = client_from("198.51.100.40")
    owner.register(name, PASSWORD)
    thief = client_from("198.51.100.41")  # holds a stolen session cookie
    assert thief.login(name, PASSWORD).status_code == 200
    statuses = [
        thief.post("/api/auth/password", {"current_password": f"guess {i}",
                                          "new_password": "whatever works",
                                          "username": new_username()}).status_code
        for i in range(4)
    ]
    # A different username in each body does not buy more guesses.
    assert statuses == [401, 401, 401, 429]


def test_account_deletion_guesses_are_limited_per_user(limited):
    client_from, _ = limited
    name = new_username()
    owner = client_from("198.51.100.50")
    assert owner.register(name, PASSWORD).status_code == 201  # attempt 1 of 6 here
    assert owner.login(name, PASSWORD).status_code == 200     # 2
    statuses = [owner.delete("/api/account", {"password": f"guess {i}"}).status_code
                for i in range(4)]                             # 3 to 6: within the address's 6
    assert statuses == [401, 401, 401, 429]
    assert owner.get("/api/me").status_code == 200  # nothing was deleted


def test_password_changes_count_against_the_address_budget(limited):
    client_from, _ = limited
    name = new_username()
    owner = client_from("198.51.100.60")
    assert owner.register(name, PASSWORD).status_code == 201  # attempt 1 of 6
    assert owner.login(name, PASSWORD).status_code == 200     # 2
    passwords = [PASSWORD, "second good one", PASSWORD, "second good one", PASSWORD]
    statuses = [owner.post("/api/auth/password", {"current_password": old,
                                                  "new_password": new}).status_code
                for old, new in pairwise(passwords)]
    # Successes are no failures, but every one submits a password: 3 to 6, then 7.
    assert statuses == [204, 204, 204, 204]
    over = owner.post("/api/auth/password", {"current_password": PASSWORD,
                                             "new_password": "second good one"})
    assert over.status_code == 429 and over.json()["error"] == "rate_limited"


def test_the_api_and_the_form_login_share_one_failure_budget(limited):
    client_from, _ = limited
    name = new_username("shared")
    assert client_from("198.51.100.70").register(name, PASSWORD).status_code == 201
    attacker = client_from("203.0.113.70")
    assert [attacker.login(name, f"guess {i}").status_code for i in range(3)] == [401] * 3
    # The same account from the same address through the login form: no
    # fresh budget there.
    page = attacker.http.get(attacker.base + "/login", timeout=10)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)[1]
    form = attacker.http.post(attacker.base + "/login", timeout=10,
                              data={"csrf_token": token, "username": name, "password": "guess 4"})
    assert form.status_code == 429


def test_a_huge_username_makes_no_huge_limiter_key(limited):
    client_from, redis_server = limited
    attacker = client_from("203.0.113.71")
    # 900 kB of JSON (each U+FDFA escaped in 6 bytes), just under the body
    # limit; NFKC turns each into 18 characters: 2.7 million.
    huge = attacker.login("\ufdfa" * 150_000, "x")
    assert huge.status_code in (401, 422), huge.status_code
    with redis_server.client() as db:
        longest = max(len(key) for key in db.scan_iter("LIMITS*", count=1000))
    assert longest < 200, longest
