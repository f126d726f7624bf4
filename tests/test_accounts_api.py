"""Every API route with its success and error statuses, against real
gunicorn (gevent) and Redis."""

import threading

import pytest

from service.accounts import AccountGone, AccountStore
from tests.support.api import PASSWORD, new_username


def test_csrf_token_endpoint(api):
    client = api()
    r = client.get("/api/csrf")
    assert r.status_code == 200
    assert len(r.json()["csrf_token"]) > 20
    assert r.headers["Cache-Control"] == "no-store"


def test_register_then_taken_name_is_409(api):
    client, name = api(), new_username()
    r = client.register(name, PASSWORD)
    assert r.status_code == 201 and r.json() == {"username": name}
    again = api().register(name.upper(), PASSWORD)  # names are case-folded
    assert again.status_code == 409
    assert again.json()["error"] == "username_taken"
    # ... and NFKC-normalised: the full-width look-alike is the same name.
    lookalike = "".join(chr(ord(c) + 0xFEE0) for c in name)  # "ｕｓｅｒ－..."
    assert lookalike != name
    assert api().register(lookalike, PASSWORD).status_code == 409
    assert api().login(lookalike, PASSWORD).status_code == 200


def test_passwords_are_stored_as_argon2id_with_owasps_parameters(api, redis_server):
    name = new_username()
    assert api().register(name, PASSWORD).status_code == 201
    with redis_server.client() as db:
        stored = db.hget(f"user:{db.get(f'username:{name}').decode()}", "password").decode()
    # OWASP's minimum for Argon2id: 19 MiB, 2 passes, 1 lane; never the password.
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), stored
    assert PASSWORD not in stored


@pytest.mark.parametrize("body, fields", [
    ({"username": "ab", "password": PASSWORD}, {"username"}),
    ({"username": "has space", "password": PASSWORD}, {"username"}),
    ({"username": new_username(), "password": "short"}, {"password"}),
    ({"username": 5, "password": None}, {"username", "password"}),
])
def test_register_validation_is_422_naming_the_fields(api, body, fields):
    r = api().post("/api/auth/register", body)
    assert r.status_code == 422
    assert r.json()["error"] == "validation_failed"
    assert set(r.json()["fields"]) == fields


def test_bad_bodies_are_400_and_415(api):
    client = api()
    token = client.fetch_csrf()
    not_json = client.http.post(client.base + "/api/auth/login", data="username=x",
                                headers={"X-CSRF-Token": token,
                                         "Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 415
    broken = client.http.post(client.base + "/api/auth/login", data='{"username": ',
                              headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"] == "invalid_json"
    array = client.post("/api/auth/login", ["not", "an", "object"])
    assert array.status_code == 400 and "JSON object" in array.json()["message"]


def test_login_me_logout(api, account):
    username, password = account
    client = api()
    assert client.get("/api/me").status_code == 401
    r = client.login(username, password)
    assert r.status_code == 200
    assert r.json()["username"] == username
    me = client.get("/api/me")
    assert me.status_code == 200 and me.json()["username"] == username
    assert me.json()["account_number"].startswith("ACCT-")
    out = client.logout()
    assert out.status_code == 204
    assert out.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'
    assert client.get("/api/me").status_code == 401


def test_wrong_password_and_unknown_user_look_the_same(api, account):
    username, _ = account
    wrong = api().login(username, "not the password")
    nobody = api().login(new_username("nobody"), "not the password")
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json() == {
        "error": "invalid_credentials", "message": "Invalid username or password."}


def test_csrf_is_required_on_every_state_changing_route(api, account):
    username, password = account
    client = api()
    client.login(username, password)
    for method, path in [("POST", "/api/auth/register"), ("POST", "/api/auth/login"),
                         ("POST", "/api/auth/logout"), ("POST", "/api/auth/password"),
                         ("DELETE", "/api/account"), ("DELETE", "/api/sessions/x"),
                         ("POST", "/api/sessions/revoke-others")]:
        missing = client.request(method, path, json={}, csrf=False)
        assert missing.status_code == 403, (method, path)
        assert missing.json()["error"] == "csrf_failed"
        wrong = client.request(method, path, json={}, csrf=False,
                               headers={"X-CSRF-Token": "forged.token.value"})
        assert wrong.status_code == 403, (method, path)
    assert client.get("/api/me").status_code == 200  # still logged in


def test_csrf_token_of_another_session_is_rejected(api, account):
    username, password = account
    victim, attacker = api(), api()
    victim.login(username, password)
    stolen_elsewhere = attacker.fetch_csrf()
    r = victim.request("POST", "/api/sessions/revoke-others", csrf=False,
                       headers={"X-CSRF-Token": stolen_elsewhere})
    assert r.status_code == 403


def test_change_password(api, account):
    username, password = account
    client = api()
    client.login(username, password)
    wrong = client.post("/api/auth/password", {"current_password": "nope nope",
                                               "new_password": "another good one"})
    assert wrong.status_code == 401
    weak = client.post("/api/auth/password", {"current_password": password,
                                              "new_password": "short"})
    assert weak.status_code == 422 and set(weak.json()["fields"]) == {"new_password"}
    ok = client.post("/api/auth/password", {"current_password": password,
                                            "new_password": "another good one"})
    assert ok.status_code == 204
    assert client.get("/api/me").status_code == 200
    assert api().login(username, password).status_code == 401
    assert api().login(username, "another good one").status_code == 200


def test_delete_account(api, account):
    username, password = account
    client = api()
    client.login(username, password)
    assert client.delete("/api/account", {"password": "wrong password"}).status_code == 401
    r = client.delete("/api/account", {"password": password})
    assert r.status_code == 204
    assert r.headers["Clear-Site-Data"]
    assert client.get("/api/me").status_code == 401
    assert api().login(username, password).status_code == 401
    assert api().register(username, password).status_code == 201  # the name is free again


def test_sessions_list_revoke_and_404(api, account):
    username, password = account
    first, second = api(forwarded_for="198.51.100.1"), api(forwarded_for="198.51.100.2")
    first.login(username, password)
    second.login(username, password)
    listing = first.get("/api/sessions")
    assert listing.status_code == 200
    sessions = listing.json()["sessions"]
    assert len(sessions) == 2
    assert [s["current"] for s in sessions] == [True, False]
    for s in sessions:
        assert set(s) == {"handle", "created", "last_seen", "ip", "user_agent", "current"}
        assert s["handle"] not in (first.sid, second.sid)  # never the session id
        assert "python-requests" in s["user_agent"]
    assert {s["ip"] for s in sessions} == {"198.51.100.1", "198.51.100.2"}
    other = next(s["handle"] for s in sessions if not s["current"])
    assert first.delete(f"/api/sessions/{other}").status_code == 204
    assert second.get("/api/me").status_code == 401
    assert first.delete(f"/api/sessions/{other}").status_code == 404
    assert first.post("/api/sessions/revoke-others").status_code == 204
    assert first.get("/api/me").status_code == 200


def test_sessions_routes_need_login(api):
    client = api()
    assert client.get("/api/sessions").status_code == 401
    assert client.post("/api/sessions/revoke-others").status_code == 401
    assert client.delete("/api/sessions/abc").status_code == 401
    assert client.post("/api/auth/password", {}).status_code == 401
    assert client.delete("/api/account", {}).status_code == 401


def test_a_password_change_racing_the_accounts_deletion_leaves_nothing_behind(
        api, redis_server):
    """Two tabs of one user: one changes the password while the other deletes
    the account. The change's write comes last (it hashes twice): it must
    not recreate a record of the deleted account."""
    for _ in range(5):  # a race: several rounds
        change_while_deleting(api, redis_server)


def change_while_deleting(api, redis_server):
    name = new_username("race")
    changer, deleter = api(), api()
    assert changer.register(name, PASSWORD).status_code == 201
    for tab in (changer, deleter):
        assert tab.login(name, PASSWORD).status_code == 200
        tab.fetch_csrf()
    with redis_server.client() as db:
        uid = db.get(f"username:{name}").decode()
    results = {}

    def change():
        results["change"] = changer.post("/api/auth/password", {
            "current_password": PASSWORD, "new_password": "another good one"}).status_code

    def delete():
        results["delete"] = deleter.delete("/api/account", {"password": PASSWORD}).status_code

    threads = [threading.Thread(target=change), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results["delete"] == 204
    assert results["change"] in (204, 401), results
    with redis_server.client() as db:
        assert not db.exists(f"user:{uid}"), db.hgetall(f"user:{uid}")
        assert not db.exists(f"username:{name}")
    assert changer.get("/api/me").status_code == 401
    assert api().login(name, "another good one").status_code == 401


def test_the_store_never_writes_a_password_for_a_deleted_account(redis_server):
    with redis_server.client() as db:
        store = AccountStore(db)
        user = store.create(new_username("gone"), "$argon2id$old")
        assert store.set_password(user.uid, "$argon2id$new") == 1  # the control
        store.delete(user)
        with pytest.raises(AccountGone):
            store.set_password(user.uid, "$argon2id$newer")
        assert not db.exists(f"user:{user.uid}")
        # What the race left before the check existed reads as no account.
        db.hset(f"user:{user.uid}", mapping={"password": "$argon2id$x", "epoch": 1})
        try:
            assert store.get(user.uid) is None
        finally:
            db.delete(f"user:{user.uid}")


def test_pruning_the_session_index_never_drops_a_session_moved_meanwhile(redis_server):
    """session_ids() saw a handle's id dead; before it pruned, a rotation moved
    that session to a new id and indexed it: the entry stays."""
    with redis_server.client() as db:
        store = AccountStore(db)
        uid = f"test-{new_username()}"
        old, new, gone = "o" * 43, "n" * 43, "g" * 43
        db.set(f"session:{new}", "x", ex=60)
        try:
            db.hset(store.index_key(uid), mapping={"moved": new, "ended": gone})
            # The stale view: both handles with ids that no longer exist.
            assert store.prune(uid, {"moved": old, "ended": gone}) == 1
            assert db.hgetall(store.index_key(uid)) == {b"moved": new.encode()}
            assert store.session_ids(uid) == {"moved": new}
        finally:
            db.delete(store.index_key(uid), f"session:{new}")
