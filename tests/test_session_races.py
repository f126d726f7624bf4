"""Races on one account against gunicorn (gevent) and Redis: a request that
ends sessions must win over one in flight that would keep a session alive.

Each race runs many times, the second request starting at a spread of
moments while the first is in flight (a password change spends most of its
~40 ms in Argon2: checking the current password, hashing the new one)."""

import threading
import time

import requests

from tests.support.api import PASSWORD, new_username

RUNS = 24


def in_background(function, *args):
    """Start function(*args) in a thread; returns a join() giving its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args)))
    thread.start()

    def join():
        thread.join(15)
        return result["value"]

    return join


def post(service, path, sid, token, body=None):
    return requests.post(service.url + path, json=body, cookies={"session": sid},
                         headers={"X-CSRF-Token": token}, timeout=10)


def session_is_dead(service, redis_server, sid):
    me = requests.get(service.url + "/api/me", cookies={"session": sid}, timeout=10)
    with redis_server.client() as db:
        return me.status_code == 401 and not db.exists(f"session:{sid}")


def test_logout_sticks_when_a_password_change_of_the_same_session_is_in_flight(
        service, api, redis_server):
    username, password = new_username(), PASSWORD
    assert api().register(username, password).status_code == 201
    outcomes = []
    for run in range(RUNS):
        client = api()
        assert client.login(username, password).status_code == 200
        sid, token = client.sid, client.csrf
        new_password = f"{PASSWORD} {run}"
        change = in_background(post, service, "/api/auth/password", sid, token,
                               {"current_password": password, "new_password": new_password})
        time.sleep(run % 8 * 0.006)  # 0 to 42 ms into the change
        logout = post(service, "/api/auth/logout", sid, token)
        changed = change()

        # 403 (no CSRF secret) or 401: the logout came first and the change
        # found no session.
        assert changed.status_code in (204, 401, 403), changed.text
        if changed.status_code == 204:
            password = new_password
        if logout.status_code != 204:
            # The change had moved the session before the logout looked: the
            # old id was dead, so the logout was refused and claimed nothing.
            assert logout.status_code == 403 and changed.status_code == 204
            outcomes.append("change, then logout refused")
            continue
        rotated = changed.cookies.get("session")
        for cookie in {sid, rotated} - {None}:
            assert session_is_dead(service, redis_server, cookie), (run, changed.status_code)
        outcomes.append("logout, change in flight" if changed.status_code == 204 else
                        "logout, then change refused")
    # Most runs really had the change in flight when the logout came.
    assert outcomes.count("logout, change in flight") >= RUNS // 3, outcomes


def test_a_login_with_the_old_password_in_flight_during_a_password_change_does_not_survive(
        api):
    username, password = new_username(), PASSWORD
    owner = api()
    assert owner.register(username, password).status_code == 201
    assert owner.login(username, password).status_code == 200
    logins = []
    for run in range(RUNS):
        attacker = api()
        attacker.fetch_csrf()
        new_password = f"{PASSWORD} {run}"
        change = in_background(owner.post, "/api/auth/password",
                               {"current_password": password, "new_password": new_password})
        time.sleep(run % 8 * 0.012)  # 0 to 84 ms into the change
        login = attacker.login(username, password)
        assert change().status_code == 204
        password = new_password

        # 401: the login checked the password after the change.
        assert login.status_code in (200, 401), login.text
        logins.append(login.status_code)
        assert attacker.get("/api/me").status_code == 401, run
        listed = owner.get("/api/sessions").json()["sessions"]
        assert [s["current"] for s in listed] == [True], run  # the owner's own, nothing else
        assert owner.get("/api/me").status_code == 200
    # Most runs really had the old password accepted while the change was in flight.
    assert logins.count(200) >= RUNS // 3, logins
