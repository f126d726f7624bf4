"""The `flask` command: the operator's commands (users, sessions) on the app
built in this process against the real redis-server, and `.venv/bin/flask`
in a fresh copy of the repository after scripts/run, with nothing exported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import Settings, create_app
from service.accounts import AccountStore
from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.processes import base_env, free_port
from tests.support.scripts import RunCommand, copy_tracked_files

COMMANDS = [["users"], ["users", "create"], ["users", "list"], ["sessions"],
            ["sessions", "list"], ["sessions", "end"], ["sessions", "purge-index"]]


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def log_in(app, username) -> object:
    """A browser-like test client logged in as username."""
    client = app.test_client()
    token = client.get("/api/csrf").json["csrf_token"]
    response = client.post("/api/auth/login", json={"username": username, "password": PASSWORD},
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    return client


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(runner, command):
    result = runner.invoke(args=[*command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"{' '.join(command)} [OPTIONS]" in result.output.splitlines()[0]


def test_users_create_asks_twice_and_refuses_bad_or_taken_names(app, runner):
    name = new_username("cli")
    result = runner.invoke(args=["users", "create", name], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert f"created {name}" in result.output
    assert app.extensions["accounts"].find(name) is not None
    assert name in runner.invoke(args=["users", "list"]).output.splitlines()

    taken = runner.invoke(args=["users", "create", name.upper(), "--password", PASSWORD])
    assert taken.exit_code == 1 and "is taken" in taken.output
    short = runner.invoke(args=["users", "create", new_username(), "--password", "short"])
    assert short.exit_code == 1 and "8 to 256 characters" in short.output
    other = new_username()
    differ = runner.invoke(args=["users", "create", other], input="aaaaaaaaa\nbbbbbbbbb\n")
    assert "The two entered values do not match" in differ.output, differ.output
    assert app.extensions["accounts"].find(other) is None
    assert differ.exit_code != 0 and "created" not in differ.output


def test_sessions_list_and_end_one_or_all(app, runner):
    name = new_username("cli")
    assert runner.invoke(args=["users", "create", name, "--password", PASSWORD]).exit_code == 0
    first, second = log_in(app, name), log_in(app, name)

    listed = runner.invoke(args=["sessions", "list", name])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 2
    handles = [line.split("\t")[0] for line in lines]
    assert all(line.split("\t")[3] == "127.0.0.1" for line in lines)

    # End one by its handle: exactly one of the two browsers is logged out.
    ended = runner.invoke(args=["sessions", "end", name, handles[0]])
    assert ended.exit_code == 0 and f"ended 1 session of {name}" in ended.output
    statuses = sorted(c.get("/api/me").status_code for c in (first, second))
    assert statuses == [200, 401]
    again = runner.invoke(args=["sessions", "end", name, handles[0]])
    assert again.exit_code == 1 and "no live session" in again.output

    ended = runner.invoke(args=["sessions", "end", name, "--all"])
    assert ended.exit_code == 0 and "ended 1 session of" in ended.output
    assert [c.get("/api/me").status_code for c in (first, second)] == [401, 401]
    assert runner.invoke(args=["sessions", "list", name]).output == ""

    neither = runner.invoke(args=["sessions", "end", name])
    assert neither.exit_code == 2 and "either a HANDLE or --all" in neither.output
    nobody = runner.invoke(args=["sessions", "list", "nobody-" + name])
    assert nobody.exit_code == 1 and "no user named" in nobody.output


def test_purge_index_removes_entries_of_ended_sessions_only(app, runner):
    name = new_username("cli")
    assert runner.invoke(args=["users", "create", name, "--password", PASSWORD]).exit_code == 0
    live = log_in(app, name)
    store: AccountStore = app.extensions["accounts"]
    user = store.find(name)
    # Two entries whose sessions are gone (expired, or deleted by hand).
    store.add_session(user.uid, "gone-1", "x" * 43, 60)
    store.add_session(user.uid, "gone-2", "y" * 43, 60)
    client = app.extensions["redis"]
    assert client.hlen(store.index_key(user.uid)) == 3

    result = runner.invoke(args=["sessions", "purge-index"])
    assert result.exit_code == 0, result.output
    # Other tests' users may have dead entries too: at least these two went.
    assert int(result.output.split()[1]) >= 2
    assert set(client.hkeys(store.index_key(user.uid))) == {
        h.encode() for h in store.session_ids(user.uid)}
    assert client.hlen(store.index_key(user.uid)) == 1
    assert live.get("/api/me").status_code == 200


def test_redis_down_is_one_line_saying_how_to_start_it(redis_server):
    settings = Settings.from_env(base_env(f"redis://127.0.0.1:{free_port()}/0",
                                          REDIS_RETRIES=0))
    app = create_app(settings)
    result = app.test_cli_runner().invoke(args=["sessions", "list", "somebody"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert "is not answering" in result.output and "start scripts/run" in result.output


def flask(repo: Path, *args, input=None, **env) -> subprocess.CompletedProcess:
    """.venv/bin/flask in repo, as a developer runs it: nothing exported."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "LANG": "C.UTF-8", **env}
    return subprocess.run([str(Path(sys.executable).parent / "flask"), *args], cwd=repo,
                          env=environment, input=input, capture_output=True, text=True,
                          timeout=60, check=False)


def test_flask_cli_in_a_fresh_copy_after_scripts_run(tmp_path):
    repo = tmp_path / "clone"
    copy_tracked_files(repo)
    before = flask(repo, "routes")
    assert before.returncode == 2
    assert "run scripts/run once" in before.stderr

    run = RunCommand(repo, tmp_path / "run.log").start()
    try:
        routes = flask(repo, "routes")
        assert routes.returncode == 0, routes.stderr
        assert "/api/auth/login" in routes.stdout and "/healthz" in routes.stdout

        name = new_username("ops")
        created = flask(repo, "users", "create", name, "--password", PASSWORD)
        assert created.returncode == 0, created.stderr
        assert name in flask(repo, "users", "list").stdout.splitlines()
        # The user the CLI made logs in on the server scripts/run serves.
        browsers = [ApiClient(run.url), ApiClient(run.url)]
        for browser in browsers:
            assert browser.login(name, PASSWORD).status_code == 200
        listed = flask(repo, "sessions", "list", name)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
        handle = listed.stdout.split("\t", 1)[0]
        assert re.fullmatch(r"[0-9a-f]{24}", handle), handle  # never read as an option
        ended = flask(repo, "sessions", "end", name, handle)
        assert ended.returncode == 0 and "ended 1 session" in ended.stdout
        assert sorted(b.get("/api/me").status_code for b in browsers) == [200, 401]
        purged = flask(repo, "sessions", "purge-index")
        assert purged.returncode == 0 and purged.stdout.startswith("removed 0 ")
        ended = flask(repo, "sessions", "end", name, "--all")
        assert ended.returncode == 0 and "ended 1 session" in ended.stdout
        assert [b.get("/api/me").status_code for b in browsers] == [401, 401]
        for browser in browsers:
            browser.close()

        shell = flask(repo, "shell", input="print('ping', redis.ping())\n")
        assert "ping True" in shell.stdout, shell.stderr
    finally:
        run.stop()
    # Redis is gone with scripts/run; the CLI still loads, and says what to do.
    assert flask(repo, "routes").returncode == 0
    down = flask(repo, "sessions", "list", name)
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "start scripts/run" in down.stderr, down.stderr
