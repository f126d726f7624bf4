"""Settings from the environment, and `python -m service check`."""

import os
import re
import secrets
import subprocess
import sys

import pytest

from service.config import ConfigError, Settings
from tests.support.processes import ROOT

STRONG = secrets.token_urlsafe(48)
PROD = {
    "APP_ENV": "production",
    "SECRET_KEY": STRONG,
    "REDIS_URL": "redis://:hunter2hunter2@127.0.0.1:6390/0",
    "ALLOWED_HOSTS": "example.com",
}


def problems(**overrides):
    env = {k: v for k, v in {**PROD, **overrides}.items() if v is not None}
    return Settings.from_env(env).problems


def test_production_defaults_are_secure():
    s = Settings.from_env(PROD)
    assert s.problems == ()
    assert s.session_cookie_name == "__Host-session"
    assert s.session_cookie_secure is True
    assert s.session_cookie_samesite == "Lax"


def test_the_app_access_log_is_off_in_production_where_nginx_writes_it():
    assert Settings.from_env(PROD).access_log is False
    assert Settings.from_env({**PROD, "ACCESS_LOG": "true"}).access_log is True
    assert Settings.from_env({**PROD, "APP_ENV": "development"}).access_log is True


def test_unset_app_env_means_production():
    assert Settings.from_env({k: v for k, v in PROD.items() if k != "APP_ENV"}).production


@pytest.mark.parametrize(
    "secret, fragment",
    [
        (None, "SECRET_KEY is not set"),
        ("short-but-random-8Hq", "SECRET_KEY is too short"),
        ("you-will-never-guess", "well-known placeholder"),
        ("a" * 64, "repeats too few characters"),
    ],
)
def test_production_refuses_missing_or_weak_secret(secret, fragment):
    found = problems(SECRET_KEY=secret)
    assert any(fragment in p for p in found), found
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({**PROD, "SECRET_KEY": secret or ""}).require_valid()


def test_production_refuses_missing_redis_url_and_insecure_cookies():
    assert any("REDIS_URL is not set" in p for p in problems(REDIS_URL=None))
    assert any("SESSION_COOKIE_SECURE must be true" in p for p in problems(
        SESSION_COOKIE_SECURE="false", SESSION_COOKIE_NAME="session"))
    assert any("must start with __Host-" in p for p in problems(SESSION_COOKIE_NAME="sid"))
    assert any("requires SESSION_COOKIE_SECURE" in p for p in problems(
        SESSION_COOKIE_SECURE="false"))
    assert any("SESSION_COOKIE_SAMESITE" in p for p in problems(SESSION_COOKIE_SAMESITE="None"))
    assert any("ALLOWED_HOSTS" in p for p in problems(ALLOWED_HOSTS=None))
    assert any("REDIS_URL must start with" in p for p in problems(REDIS_URL="localhost:6390"))


def test_development_allows_plain_http_cookies_but_needs_a_secret():
    dev = {"APP_ENV": "development", "REDIS_URL": "unix:///tmp/x.sock"}
    assert any("SECRET_KEY is not set" in p for p in Settings.from_env(dev).problems)
    s = Settings.from_env({**dev, "SECRET_KEY": "dev-only"})
    assert s.problems == ()
    assert (s.session_cookie_name, s.session_cookie_secure) == ("session", False)


def test_unparseable_values_name_the_variable():
    with pytest.raises(ConfigError, match="REDIS_RETRIES='many' is not a number"):
        Settings.from_env({**PROD, "REDIS_RETRIES": "many"}).require_valid()
    with pytest.raises(ConfigError, match="APP_ENV='staging'"):
        Settings.from_env({**PROD, "APP_ENV": "staging"}).require_valid()


def test_dotenv_never_overrides_the_environment(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("LOG_LEVEL=DEBUG\nLOG_FORMAT=json\n")
    code = (
        "import os; from service.config import load_dotenv_file; load_dotenv_file(); "
        "print(os.environ['LOG_LEVEL'], os.environ['LOG_FORMAT'])"
    )
    env = {"PATH": os.environ["PATH"], "DOTENV_PATH": str(dotenv), "LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["WARNING", "json"]


def run_check(env):
    return subprocess.run(
        [sys.executable, "-m", "service", "check"],
        cwd=ROOT, check=False, capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "DOTENV_PATH": os.devnull, **env},
    )


def test_check_command_redacts_secrets_and_passes_a_ready_config():
    result = run_check(PROD)
    assert result.returncode == 0, result.stderr
    assert STRONG not in result.stdout
    assert "hunter2" not in result.stdout
    assert '"redis_url": "redis://:***@127.0.0.1:6390/0"' in result.stdout
    assert "Production-ready" in result.stderr


def test_check_refuses_a_worker_class_gunicorn_cannot_load():
    result = run_check({**PROD, "WORKER_CLASS": "service.worker.GeventWorkr"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "WORKER_CLASS=" in line]
    assert line.startswith("  - WORKER_CLASS='service.worker.GeventWorkr' cannot be loaded (")
    assert "GeventWorkr" in line.split("cannot be loaded", 1)[1]  # the reason names it
    assert line.endswith("; e.g. WORKER_CLASS=service.worker.GeventWorker."), line
    assert run_check(PROD).returncode == 0  # the default loads (the control)


def test_check_command_fails_and_explains_when_not_ready():
    result = run_check({**PROD, "SECRET_KEY": "changeme"})
    assert result.returncode == 1
    assert "changeme" not in result.stdout
    assert "SECRET_KEY is a well-known placeholder" in result.stderr
    dev = run_check({**PROD, "APP_ENV": "development"})
    assert dev.returncode == 1
    assert "set APP_ENV=production" in dev.stderr


def test_env_example_documents_every_variable_the_code_reads():
    sources = [*ROOT.glob("service/*.py"), ROOT / "gunicorn.conf.py"]
    pattern = re.compile(r'\b_[a-z_]+\(\s*environ,\s*"([A-Z_]+)"'
                         r'|\benv\("([A-Z_]+)"|os\.environ\.get\("([A-Z_]+)"')
    read = {name for path in sources for match in pattern.findall(path.read_text())
            for name in match if name}
    assert {"SECRET_KEY", "REDIS_URL", "APP_ENV", "BIND"} <= read  # the scan works
    documented = set(re.findall(r"^#? ?([A-Z_]+)[=:]", (ROOT / ".env.example").read_text(),
                                re.MULTILINE))
    assert read - documented == set()


# One bad value of every kind the kit reads, gunicorn's settings included.
BAD_VALUES = [
    ("WEB_CONCURRENCY", "two"),
    ("WORKER_CONNECTIONS", "0"),
    ("BACKLOG", "lots"),
    ("MAX_REQUESTS", "-1"),
    ("MAX_REQUESTS_JITTER", "1.5"),
    ("GUNICORN_TIMEOUT", "30s"),
    ("GRACEFUL_TIMEOUT", "forever"),
    ("KEEPALIVE", "75 seconds"),
    ("BIND", "localhost:http"),
    ("AUTH_RATE_LIMIT", "twenty a minute"),
    ("LOGIN_FAILURE_LIMIT", "5 per fortnight"),
    ("ANONYMOUS_SESSION_LIMIT", "lots"),
    ("LOG_LEVEL", "loud"),
    ("LOG_FORMAT", "xml"),
    ("SESSION_COOKIE_SECURE", "maybe"),
    ("ACCESS_LOG", "sometimes"),
    ("REDIS_POOL_TIMEOUT", "soon"),
    ("APP_ENV", "staging"),
    ("FORWARDED_ALLOW_IPS", "10.0.0.5/24"),  # host bits set: gunicorn refuses it
    ("BACKLOG", "99999999999"),  # more than a C int: gunicorn's listen() overflows
    ("REDIS_SOCKET_TIMEOUT", "inf"),
    ("BLOCKED_HUB_THRESHOLD", "nan"),
]


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable_with_an_example(name, value):
    found = problems(**{name: value})
    assert len(found) == 1, found
    assert found[0].startswith(f"{name}={value!r} ")
    assert f"; e.g. {name}=" in found[0]
    assert "\n" not in found[0]


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_create_app_refuses_what_check_and_gunicorn_refuse(name, value):
    from service import create_app

    # The same validation: refused before the app touches Redis.
    with pytest.raises(ConfigError, match=re.escape(f"{name}={value!r} ")):
        create_app(Settings.from_env({**PROD, name: value}))


def readme_secret_line():
    """SECRET_KEY=... exactly as deploy/README.md tells operators to write it."""
    text = (ROOT / "deploy" / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("SECRET_KEY=")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("secret", [
    readme_secret_line().partition("=")[2],
    "${SECRET_KEY}",
    "$(openssl rand -base64 48)",
    "Zq3...pasted-from-a-ticket-then-cut-short-8Hq2vXw",
    "changeme-to-something-long-and-random-0123456789",
])
def test_template_secrets_are_refused(secret):
    found = problems(SECRET_KEY=secret)
    assert len(found) == 1, found
    assert found[0].startswith("SECRET_KEY is ")
    assert "python3 -c" in found[0]  # says how to make a real one
    assert secret not in found[0]


def test_template_values_are_refused_in_any_variable():
    found = problems(REDIS_URL="redis://:<password>@127.0.0.1:6379/0",
                     ALLOWED_HOSTS="${DOMAIN}")
    assert len(found) == 2, found
    assert found[0].startswith("REDIS_URL is an unfilled template")
    assert "<password>" not in found[0]
    assert found[1].startswith("ALLOWED_HOSTS is an unfilled template")


def test_check_refuses_the_readme_secret_pasted_literally(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("\n".join(
        [f"{k}={v}" for k, v in PROD.items() if k != "SECRET_KEY"] + [readme_secret_line()]))
    result = subprocess.run(
        [sys.executable, "-m", "service", "check", "--env-file", str(env_file)],
        cwd=ROOT, check=False, capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "DOTENV_PATH": os.devnull},
    )
    assert result.returncode == 1
    assert "SECRET_KEY is an unfilled template" in result.stderr
    assert "Production-ready" not in result.stderr
    assert '"secret_key": null' in result.stdout


@pytest.mark.parametrize("name, value", [("WEB_CONCURRENCY", "two"), ("BIND", "localhost:http"),
                                         ("AUTH_RATE_LIMIT", "twenty a minute")])
def test_check_exits_1_with_one_line_for_a_bad_value(name, value):
    result = run_check({**PROD, name: value, "LOG_LEVEL": "loud"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    header, *lines = result.stderr.strip().splitlines()
    assert header == "Not production-ready:"
    assert len(lines) == 2, lines  # every bad value at once, one line each
    assert ("  - LOG_LEVEL='loud' must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; "
            "e.g. LOG_LEVEL=INFO.") in lines
    [line] = [line for line in lines if line.startswith(f"  - {name}={value!r} ")]
    assert f"; e.g. {name}=" in line


def test_serve_refuses_a_bad_value_in_one_line_where_gunicorn_gives_a_traceback(tmp_path):
    """gunicorn reads WEB_CONCURRENCY when it is imported, before our config
    file: `python -m service serve` (the unit's and scripts' way to start it)
    checks every setting first."""
    env = {"PATH": os.environ["PATH"], "DOTENV_PATH": os.devnull, **PROD,
           "WEB_CONCURRENCY": "two", "BIND": f"unix:{tmp_path}/never.sock"}
    served = subprocess.run([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                            check=False, capture_output=True, text=True, timeout=60)
    assert served.returncode == 1
    assert served.stderr.splitlines() == [
        "Not starting:", "  - WEB_CONCURRENCY='two' is not a number; e.g. WEB_CONCURRENCY=2."]
    # What the check spares: gunicorn itself.
    raw = subprocess.run([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
                          "wsgi:app"], cwd=ROOT, env=env, check=False, capture_output=True,
                         text=True, timeout=60)
    assert raw.returncode != 0 and "Traceback" in raw.stderr
    assert not (tmp_path / "never.sock").exists()
