"""gunicorn + gevent: patched before anything else, refuses to boot otherwise,
and refuses to start with an unsafe production configuration."""

import subprocess
import sys

import pytest
import requests

from tests.support.processes import ROOT, base_env


def test_no_monkey_patch_warning_in_worker_stderr(service):
    # The shared service has booted its worker and served requests by now.
    assert requests.get(service.url + "/test/wait", timeout=5).status_code == 200
    stderr = service.stderr()
    assert "Booting worker" in stderr
    assert "MonkeyPatchWarning" not in stderr
    assert "Refusing to boot" not in stderr
    assert "Using worker: service.worker.GeventWorker" in stderr


def test_boot_guard_refuses_a_worker_patched_too_late(redis_server, make_gunicorn):
    # --preload imports the app (and redis, ssl) in the master, before the
    # worker's monkey.patch_all(): the classic mis-ordering.
    server = make_gunicorn(
        base_env(redis_server.url),
        app="tests.support.preload_redis:app",
        extra_args=("--preload",),
    )
    process = server.launch()
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("gunicorn kept running with a mis-ordered import") from None
    stderr = server.stderr()
    assert code != 0
    assert "Refusing to boot a gevent worker" in stderr
    assert "imported before gevent patched the standard library: redis" in stderr
    assert "Worker failed to boot" in stderr
    # gevent itself notices too: the positive control for the test above.
    assert "MonkeyPatchWarning" in stderr


def test_production_refuses_to_start_with_a_weak_secret(redis_server, make_gunicorn):
    env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS="app.test",
                   SECRET_KEY="tooshort")
    server = make_gunicorn(env)
    code = server.launch().wait(30)
    assert code != 0
    stderr = server.stderr()
    assert "Refusing to start (production configuration is not safe to run)" in stderr
    assert "SECRET_KEY is too short (8 bytes, need at least 32)" in stderr
    assert "Booting worker" not in stderr  # refused in the master, before any fork


def test_production_refuses_to_start_without_a_secret(redis_server, make_gunicorn):
    env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS="app.test")
    del env["SECRET_KEY"]
    server = make_gunicorn(env)
    assert server.launch().wait(30) != 0
    assert "SECRET_KEY is not set" in server.stderr()


def test_production_starts_with_a_strong_secret(redis_server, make_gunicorn):
    env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS="localhost,127.0.0.1")
    server = make_gunicorn(env).start()
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize("name, value, where", [
    ("KEEPALIVE", "forever", "environment"),
    ("AUTH_RATE_LIMIT", "twenty a minute", "environment"),
    # gunicorn itself reads WEB_CONCURRENCY from the environment when it is
    # imported, before gunicorn.conf.py (deploy/systemd runs `check` first for
    # that); from .env only gunicorn.conf.py reads it.
    ("WEB_CONCURRENCY", "two", "dotenv"),
])
def test_a_bad_setting_stops_gunicorn_with_one_line(redis_server, make_gunicorn, tmp_path,
                                                    name, value, where):
    env = base_env(redis_server.url)
    if where == "dotenv":
        env.pop(name, None)  # the environment would win over .env
        (tmp_path / "env").write_text(f"{name}={value}\n")
        env["DOTENV_PATH"] = str(tmp_path / "env")
    else:
        env[name] = value
    server = make_gunicorn(env)
    assert server.launch().wait(30) == 1
    lines = server.stderr().strip().splitlines()
    assert lines[0] == "Refusing to start (test configuration is not safe to run):"
    assert len(lines) == 2, lines  # no traceback, no worker
    assert lines[1].startswith(f"  - {name}={value!r} ")
    assert f"; e.g. {name}=" in lines[1]


def test_the_worker_class_loads_in_the_master_without_the_app_libraries():
    """gunicorn imports the worker class in the master, before any fork or
    patching (service/worker.py): it must bring in no web library, so the
    master stays small (every worker starts as a copy of it)."""
    import sys

    code = ("import sys, service.worker; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'flask', 'werkzeug', 'redis', 'jinja2', 'prometheus_client', 'limits'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=True)
    return done.stdout


def test_boot_guard_names_unpatched_modules_and_held_originals():
    """The guard's other two checks, each in a fresh interpreter."""
    unpatched = run_python("from service import bootguard; print(bootguard.problems([]))")
    assert ("standard library modules not monkey-patched: socket, ssl, select, time, "
            "threading") in unpatched
    # A module that took socket.socket before patching keeps the blocking one.
    held = run_python(
        "import types, sys, socket\n"
        "holder = types.ModuleType('early_client'); holder.raw = socket.socket\n"
        "sys.modules['early_client'] = holder\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from service import bootguard; print(bootguard.problems([]))")
    assert "modules keep unpatched socket/ssl objects" in held
    assert "early_client.raw" in held
    assert "not monkey-patched" not in held
    # The positive control: a cleanly patched interpreter has no problem.
    clean = run_python("from gevent import monkey; monkey.patch_all()\n"
                       "from service import bootguard; print(bootguard.problems([]))")
    assert clean.strip() == "[]"
