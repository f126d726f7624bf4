"""Settings, read from the environment in one place.

Every setting the kit reads is here, gunicorn's too: ``python -m service
check``, ``gunicorn.conf.py`` and ``create_app`` run the same checks, and each
bad value is one line naming the variable with an example.

This module imports nothing beyond the standard library, python-dotenv and
the limits parser (see ``_rate_limit``), so ``gunicorn.conf.py`` can use it in
the master process before gevent patches anything.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .redis_url import SENTINEL_SCHEME, parse_sentinel_url

ENVIRONMENTS = ("development", "production", "test")
MIN_SECRET_BYTES = 32

# Values copied from tutorials and templates; a secret equal to one of them is
# public knowledge, whatever its length.
PLACEHOLDER_SECRETS = frozenset(
    s.lower()
    for s in (
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "secret-key",
        "secret_key",
        "dev",
        "development",
        "default",
        "password",
        "you-will-never-guess",
        "replace-me",
        "replace-with-a-long-random-string",
        "insecure",
        "not-a-secret",
        "your-secret-key",
        "super-secret",
    )
)
# Words that mark a SECRET_KEY as a placeholder wherever they appear in it;
# long enough never to turn up in a random secret.
PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "replace-me", "replace_me",
                     "replace-with", "your-secret", "you-will-never-guess")

DEFAULT_WORKER_CLASS = "service.worker.GeventWorker"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
SAMESITE_VALUES = ("Lax", "Strict")
HOST_PREFIX = "__Host-"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to set."""


def load_dotenv_file(path: str | os.PathLike | None = None) -> None:
    """Load ``.env`` for local runs; variables already set always win."""
    from dotenv import load_dotenv

    if path is None:
        path = os.environ.get("DOTENV_PATH") or Path.cwd() / ".env"
    load_dotenv(path, override=False)


GENERATE_SECRET = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
# What a value looks like when it was copied from documentation unfilled.
TEMPLATE = re.compile(r"<[^<>]*>|\$\{[^}]*\}|\$\([^)]*\)|\.\.\.|\u2026")
# How to fix variables whose default is no example.
HINTS = {
    "SECRET_KEY": f"generate one with: {GENERATE_SECRET}",
    "REDIS_URL": "e.g. REDIS_URL=redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "e.g. ALLOWED_HOSTS=example.com,www.example.com",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Environ:
    """The environment being read, and what was wrong with it: every bad value
    is reported (one line each, naming the variable), none raises."""

    def __init__(self, environ):
        self.environ = environ
        self.problems: list[str] = []
        self.bad_names: set[str] = set()

    def bad(self, name: str, problem: str, example=None) -> None:
        hint = HINTS.get(name)
        if hint is None and example not in (None, ""):
            hint = f"e.g. {name}={example}"
        self.problems.append(f"{problem}; {hint}." if hint else f"{problem}.")
        self.bad_names.add(name)


def _get(environ: _Environ, name: str, default: str | None = None, example=None) -> str | None:
    value = environ.environ.get(name)
    if value is None or value.strip() == "":
        return default
    value = value.strip()
    if TEMPLATE.search(value):
        # Never echo the value: it may be a secret.
        environ.bad(name, f"{name} is an unfilled template (it contains <...>, ${{...}}, "
                          "$(...) or ...): replace the whole value",
                    default if example is None else example)
        return default
    return value


def _bool(environ: _Environ, name: str, default: bool) -> bool:
    raw = _get(environ, name, example=str(default).lower())
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    environ.bad(name, f"{name}={raw!r} is not a boolean: use true or false",
                str(default).lower())
    return default


INT_MAX = 2**31 - 1


def _number(environ: _Environ, name: str, default, kind=int, minimum=0, maximum=INT_MAX):
    raw = _get(environ, name, example=default)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "whole number" if _is_float(raw) else "number"
        environ.bad(name, f"{name}={raw!r} is not a {what}", default)
        return default
    if not math.isfinite(value):  # float("inf"), float("nan")
        environ.bad(name, f"{name}={raw!r} is not a finite number", default)
        return default
    if value < minimum:
        environ.bad(name, f"{name}={raw!r} must be at least {minimum}", default)
        return default
    if kind is int and maximum is not None and value > maximum:  # gunicorn, the kernel: C ints
        environ.bad(name, f"{name}={raw!r} must be at most {maximum}", default)
        return default
    return value


def _is_float(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def _list(environ: _Environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _get(environ, name, example=",".join(default))
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(environ: _Environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Addresses or networks (as gunicorn reads them: no host bits set), or '*'."""
    items = _list(environ, name, default)
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item)
        except ValueError as exc:
            raw = environ.environ.get(name)
            environ.bad(name, f"{name}={raw!r} holds {item!r}, not an address or network "
                        f"({exc})", ",".join(default))
    return items


def _choice(environ: _Environ, name: str, default: str, choices, normalize=str) -> str:
    raw = _get(environ, name, default)
    if normalize(raw) not in choices:
        environ.bad(name, f"{name}={raw!r} must be one of {', '.join(choices)}", default)
        return default
    return normalize(raw)


def _rate_limit(environ: _Environ, name: str, default: str) -> str:
    raw = _get(environ, name, default)
    # The gunicorn master checks this too, before gevent patches anything:
    # limits imports no client library and keeps no socket or ssl object
    # (service.bootguard checks both in every worker, and the test suite boots
    # with this import in the master). It does import asyncio, which nothing
    # here runs.
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        environ.bad(name, f"{name}={raw!r} is not a rate limit", default)
        return default
    return raw


def _binds(environ: _Environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    binds = _list(environ, name, default)
    bad = [b for b in binds if not _is_address(b)]
    if bad:
        environ.bad(name, f"{name}={','.join(bad)!r} is not host:port, unix:/path or fd://N",
                    "127.0.0.1:8000 or BIND=unix:/run/flask-service/gunicorn.sock")
        return default
    return binds


def _is_address(bind: str) -> bool:
    """What gunicorn's parse_address accepts, checked without importing it."""
    if bind.startswith("unix:"):
        return len(bind) > len("unix:")
    if bind.startswith("fd://"):
        return bind[len("fd://"):].isdigit()
    if bind.startswith("["):  # [::1]:8000
        host, sep, rest = bind[1:].partition("]")
        return bool(host and sep) and (rest == "" or rest[0] == ":" and _is_port(rest[1:]))
    host, sep, port = bind.rpartition(":")
    return _is_port(port) if sep else bool(bind)


def _is_port(port: str) -> bool:
    return port.isdigit() and int(port) <= 65535


@dataclass(frozen=True)
class Settings:
    # Defaults live in from_env, the one place that builds Settings.
    env: str
    secret_key: str | None
    redis_url: str | None
    redis_max_connections: int
    redis_pool_timeout: float
    redis_connect_timeout: float
    redis_socket_timeout: float
    redis_retries: int
    redis_wait_replicas: int
    redis_wait_timeout: float
    session_cookie_name: str
    session_cookie_secure: bool
    session_cookie_samesite: str
    session_idle_timeout: int
    session_absolute_timeout: int
    max_content_length: int
    auth_rate_limit: str
    login_failure_limit: str
    anonymous_session_limit: str
    allowed_hosts: tuple[str, ...]
    proxy_hops: int
    forwarded_allow_ips: tuple[str, ...]
    log_format: str
    log_level: str
    access_log: bool
    # gunicorn (gunicorn.conf.py)
    bind: tuple[str, ...]
    backlog: int
    workers: int
    worker_class: str
    worker_connections: int
    max_requests: int
    max_requests_jitter: int
    worker_timeout: int
    graceful_timeout: int
    keepalive: int
    keepalive_max_age: float
    proc_name: str
    control_socket: str
    # Metrics (service/metrics.py) and the blocked-hub watchdog (service/watchdog.py)
    metrics_bind: str
    metrics_allow_public: bool
    blocked_hub_threshold: float
    # live events (service/events/)
    events_ping_interval: int
    events_max_connections: int
    events_max_per_address: int
    events_max_per_session: int
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, environ=None) -> Settings:
        """Read and check the settings. Never raises: what is wrong is in
        ``problems``, one line per problem (``require_valid`` raises them)."""
        environ = _Environ(os.environ if environ is None else environ)
        # Unknown: judge the rest as production, the strictest.
        env = _choice(environ, "APP_ENV", "production", ENVIRONMENTS, str.lower)
        production = env == "production"
        # Outside production the service is reached over plain http://127.0.0.1,
        # where browsers drop Secure cookies, so the defaults differ.
        secure_default = production
        cookie_default = "__Host-session" if production else "session"
        hosts_default = () if production else ("localhost", "127.0.0.1")
        log_format = _choice(environ, "LOG_FORMAT", "text", ("text", "json"), str.lower)
        log_level = _choice(environ, "LOG_LEVEL", "INFO", LOG_LEVELS, str.upper)
        samesite = (_get(environ, "SESSION_COOKIE_SAMESITE", "Lax") or "").capitalize()

        settings = cls(
            env=env,
            secret_key=_get(environ, "SECRET_KEY"),
            redis_url=_get(environ, "REDIS_URL"),
            redis_max_connections=_number(environ, "REDIS_MAX_CONNECTIONS", 50, minimum=1),
            redis_pool_timeout=_number(environ, "REDIS_POOL_TIMEOUT", 5.0, float, 0.1),
            redis_connect_timeout=_number(environ, "REDIS_CONNECT_TIMEOUT", 1.0, float, 0.05),
            redis_socket_timeout=_number(environ, "REDIS_SOCKET_TIMEOUT", 2.0, float, 0.05),
            redis_retries=_number(environ, "REDIS_RETRIES", 2, minimum=0),
            redis_wait_replicas=_number(environ, "REDIS_WAIT_REPLICAS", 0, minimum=0),
            redis_wait_timeout=_number(environ, "REDIS_WAIT_TIMEOUT", 1.0, float, 0.01),
            session_cookie_name=_get(environ, "SESSION_COOKIE_NAME", cookie_default),
            session_cookie_secure=_bool(environ, "SESSION_COOKIE_SECURE", secure_default),
            session_cookie_samesite=samesite,
            session_idle_timeout=_number(environ, "SESSION_IDLE_TIMEOUT", 3600, minimum=1),
            session_absolute_timeout=_number(
                environ, "SESSION_ABSOLUTE_TIMEOUT", 43200, minimum=1
            ),
            max_content_length=_number(environ, "MAX_CONTENT_LENGTH", 1024 * 1024, minimum=1024,
                                       maximum=None),
            auth_rate_limit=_rate_limit(environ, "AUTH_RATE_LIMIT", "20 per minute"),
            login_failure_limit=_rate_limit(environ, "LOGIN_FAILURE_LIMIT", "5 per 15 minutes"),
            anonymous_session_limit=_rate_limit(environ, "ANONYMOUS_SESSION_LIMIT",
                                                "30 per minute"),
            allowed_hosts=_list(environ, "ALLOWED_HOSTS", hosts_default),
            proxy_hops=_number(environ, "PROXY_HOPS", 1, minimum=0),
            forwarded_allow_ips=_networks(environ, "FORWARDED_ALLOW_IPS", ("127.0.0.1", "::1")),
            log_format=log_format,
            log_level=log_level,
            # nginx logs every request with the same request id (deploy/nginx):
            # the app's line would cost ~50 us of CPU per request (README).
            access_log=_bool(environ, "ACCESS_LOG", not production),
            bind=_binds(environ, "BIND", ("127.0.0.1:8000",)),
            backlog=_number(environ, "BACKLOG", 2048, minimum=1),
            workers=_number(environ, "WEB_CONCURRENCY", os.cpu_count() or 1, minimum=1),
            worker_class=_get(environ, "WORKER_CLASS", DEFAULT_WORKER_CLASS),
            worker_connections=_number(environ, "WORKER_CONNECTIONS", 1000, minimum=1),
            max_requests=_number(environ, "MAX_REQUESTS", 10000),
            max_requests_jitter=_number(environ, "MAX_REQUESTS_JITTER", 1000),
            # 0 turns gunicorn's worker heartbeat off.
            worker_timeout=_number(environ, "GUNICORN_TIMEOUT", 30),
            graceful_timeout=_number(environ, "GRACEFUL_TIMEOUT", 30),
            keepalive=_number(environ, "KEEPALIVE", 75),
            keepalive_max_age=_number(environ, "KEEPALIVE_MAX_AGE", 5.0, float),
            proc_name=_get(environ, "PROC_NAME", "service"),
            control_socket=_get(environ, "GUNICORN_CONTROL_SOCKET", ""),
            metrics_bind=_get(environ, "METRICS_BIND", "") or "",
            metrics_allow_public=_bool(environ, "METRICS_ALLOW_PUBLIC", False),
            blocked_hub_threshold=_number(environ, "BLOCKED_HUB_THRESHOLD",
                                          0.2 if production else 0.0, float),
            events_ping_interval=_number(environ, "EVENTS_PING_INTERVAL", 25, minimum=1),
            events_max_connections=_number(environ, "EVENTS_MAX_CONNECTIONS", 500, minimum=1),
            events_max_per_address=_number(environ, "EVENTS_MAX_PER_ADDRESS", 50, minimum=1),
            events_max_per_session=_number(environ, "EVENTS_MAX_PER_SESSION", 10, minimum=1),
        )
        # One line per variable: a value already refused is not judged again.
        later = [p for p in _find_problems(settings) if not p.startswith(tuple(environ.bad_names))]
        return replace(settings, problems=tuple(environ.problems + later))

    @property
    def production(self) -> bool:
        return self.env == "production"

    def require_valid(self) -> Settings:
        """Return self, or raise ConfigError listing every problem."""
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise ConfigError(
                f"Refusing to start ({self.env} configuration is not safe to run):\n{lines}"
            )
        return self

    def redacted(self) -> dict:
        """The effective settings, fit to print: secrets are masked."""
        out = asdict(self)
        out.pop("problems")
        if self.secret_key:
            out["secret_key"] = f"<set, {len(self.secret_key.encode())} bytes>"
        out["redis_url"] = redact_url(self.redis_url)
        return out


def secret_problem(secret: str | None) -> str | None:
    """Why SECRET_KEY is unfit for production, or None."""
    fix = f"generate one with: {GENERATE_SECRET}"
    if not secret:
        return f"SECRET_KEY is not set; {fix}"
    lowered = secret.lower()
    if lowered in PLACEHOLDER_SECRETS or any(w in lowered for w in PLACEHOLDER_WORDS):
        return f"SECRET_KEY is a well-known placeholder; {fix}"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return (
            f"SECRET_KEY is too short ({len(secret.encode())} bytes, "
            f"need at least {MIN_SECRET_BYTES}); {fix}"
        )
    if len(set(secret)) < 10:
        return f"SECRET_KEY repeats too few characters to be random; {fix}"
    return None


def _find_problems(s: Settings) -> list[str]:
    problems = []
    if s.production:
        if problem := secret_problem(s.secret_key):
            problems.append(problem)
    elif not s.secret_key:
        problems.append(
            "SECRET_KEY is not set; scripts/run writes one into .env for you, "
            "or set it in the environment."
        )
    if not s.redis_url:
        problems.append(
            "REDIS_URL is not set; point it at your Redis, e.g. redis://127.0.0.1:6379/0, "
            "rediss://user:password@host:6380/0 or unix:///run/redis/redis.sock "
            "(scripts/run starts a private Redis and sets it for you)."
        )
    elif not s.redis_url.startswith(REDIS_SCHEMES):
        problems.append(
            f"REDIS_URL must start with one of {', '.join(REDIS_SCHEMES)}, "
            f"got {redact_url(s.redis_url)!r}."
        )
    elif s.redis_url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(s.redis_url)
        except ValueError as exc:
            problems.append(
                f"REDIS_URL {redact_url(s.redis_url)!r}: {exc}; write "
                "redis+sentinel://[user:password@]host:26379,host:26379/mymaster/0."
            )
    if s.redis_wait_replicas and s.redis_wait_timeout >= s.redis_socket_timeout:
        problems.append(
            "REDIS_WAIT_TIMEOUT must be shorter than REDIS_SOCKET_TIMEOUT: WAIT holds the "
            "connection that long before Redis answers."
        )
    if s.session_absolute_timeout < s.session_idle_timeout:
        problems.append(
            "SESSION_ABSOLUTE_TIMEOUT must not be shorter than SESSION_IDLE_TIMEOUT."
        )
    if s.events_max_connections >= s.worker_connections:
        problems.append(
            f"EVENTS_MAX_CONNECTIONS={s.events_max_connections} must be below "
            f"WORKER_CONNECTIONS={s.worker_connections}: every live-event WebSocket holds one "
            "of a worker's connections, and requests need the rest."
        )
    if s.session_cookie_samesite not in SAMESITE_VALUES:
        problems.append(
            f"SESSION_COOKIE_SAMESITE={s.session_cookie_samesite!r} must be Lax or Strict."
        )
    if s.session_cookie_name.startswith(HOST_PREFIX) and not s.session_cookie_secure:
        problems.append(
            f"SESSION_COOKIE_NAME={s.session_cookie_name} requires SESSION_COOKIE_SECURE=true "
            "(browsers reject __Host- cookies without Secure)."
        )
    if s.production:
        if not s.session_cookie_secure:
            problems.append(
                "SESSION_COOKIE_SECURE must be true in production: the session id "
                "would otherwise travel over plain HTTP."
            )
        if not s.session_cookie_name.startswith(HOST_PREFIX):
            problems.append(
                f"SESSION_COOKIE_NAME={s.session_cookie_name} must start with {HOST_PREFIX} in "
                "production, so that no subdomain can set or shadow it (use __Host-session)."
            )
        if not s.allowed_hosts:
            problems.append(
                "ALLOWED_HOSTS is not set; list the domain names the service answers to, "
                "e.g. ALLOWED_HOSTS=example.com,www.example.com."
            )
        if "*" in s.forwarded_allow_ips:
            problems.append(
                "FORWARDED_ALLOW_IPS='*' lets any client forge its address and scheme; "
                "list the proxy addresses instead (nginx on a unix socket needs none)."
            )
    if s.metrics_bind:
        problems += metrics_bind_problems(s.metrics_bind, s.metrics_allow_public)
    if 0 < s.blocked_hub_threshold < 0.01:
        problems.append("BLOCKED_HUB_THRESHOLD must be 0 (off) or at least 0.01 seconds.")
    return problems


def parse_bind(value: str) -> tuple[str, int]:
    """host:port or [v6]:port -> (host, port); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not _is_port(port) or int(port) == 0:
        raise ValueError(value)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(value)
    return host, int(port)


def metrics_bind_problems(bind: str, allow_public: bool) -> list[str]:
    """The metrics endpoint must not face the internet: a loopback or private
    IP address (or localhost), unless METRICS_ALLOW_PUBLIC says otherwise."""
    try:
        host, _ = parse_bind(bind)
    except ValueError:
        return [f"METRICS_BIND={bind!r} is not host:port, e.g. 127.0.0.1:9101."]
    if host == "localhost" or allow_public:
        return []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [f"METRICS_BIND={bind!r} needs an IP address (or localhost), not a host name."]
    if address.is_unspecified or not (address.is_loopback or address.is_private):
        return [(
            f"METRICS_BIND={bind!r} would serve metrics on a public or wildcard address; "
            "use loopback (127.0.0.1:9101) or a private address, or set "
            "METRICS_ALLOW_PUBLIC=true if a firewall really guards it."
        )]
    return []


def redact_url(url: str | None) -> str | None:
    """Mask the password of a URL such as redis://user:pass@host/0."""
    if not url or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:***" if ":" in userinfo else "***"
    return f"{scheme}{sep}{masked}@{hostpart}"
