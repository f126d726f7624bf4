"""Settings, read from the environment in one place.

This module imports nothing beyond the standard library and python-dotenv, so
``gunicorn.conf.py`` can use it in the master process before gevent patches
anything.
"""

from __future__ import annotations

import os
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


def _get(environ, name: str, default: str | None = None) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _bool(environ, name: str, default: bool) -> bool:
    raw = _get(environ, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false.")


def _number(environ, name: str, default, kind=int, minimum=0):
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number.") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}.")
    return value


def _list(environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _get(environ, name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    env: str
    secret_key: str | None
    redis_url: str | None
    redis_max_connections: int = 50
    redis_pool_timeout: float = 5.0
    redis_connect_timeout: float = 1.0
    redis_socket_timeout: float = 2.0
    redis_retries: int = 2
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 1.0
    session_cookie_name: str = "__Host-session"
    session_cookie_secure: bool = True
    session_cookie_samesite: str = "Lax"
    session_idle_timeout: int = 3600
    session_absolute_timeout: int = 43200
    max_content_length: int = 1024 * 1024
    auth_rate_limit: str = "20 per minute"
    login_failure_limit: str = "5 per 15 minutes"
    allowed_hosts: tuple[str, ...] = ()
    proxy_hops: int = 1
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    log_format: str = "text"
    log_level: str = "INFO"
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, environ=None) -> Settings:
        """Read the settings; raise ConfigError for values that cannot be parsed."""
        environ = os.environ if environ is None else environ
        env = (_get(environ, "APP_ENV", "production") or "").lower()
        if env not in ENVIRONMENTS:
            raise ConfigError(
                f"APP_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}."
            )
        production = env == "production"
        # Outside production the service is reached over plain http://127.0.0.1,
        # where browsers drop Secure cookies, so the defaults differ.
        secure_default = production
        cookie_default = "__Host-session" if production else "session"
        hosts_default = () if production else ("localhost", "127.0.0.1")
        log_format = (_get(environ, "LOG_FORMAT", "text") or "").lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT={log_format!r} must be text or json.")
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
            max_content_length=_number(environ, "MAX_CONTENT_LENGTH", 1024 * 1024, minimum=1024),
            auth_rate_limit=_get(environ, "AUTH_RATE_LIMIT", "20 per minute"),
            login_failure_limit=_get(environ, "LOGIN_FAILURE_LIMIT", "5 per 15 minutes"),
            allowed_hosts=_list(environ, "ALLOWED_HOSTS", hosts_default),
            proxy_hops=_number(environ, "PROXY_HOPS", 1, minimum=0),
            forwarded_allow_ips=_list(environ, "FORWARDED_ALLOW_IPS", ("127.0.0.1", "::1")),
            log_format=log_format,
            log_level=(_get(environ, "LOG_LEVEL", "INFO") or "INFO").upper(),
        )
        return replace(settings, problems=tuple(_find_problems(settings)))

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
    fix = 'generate one with: python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
    if not secret:
        return f"SECRET_KEY is not set; {fix}"
    if secret.lower() in PLACEHOLDER_SECRETS:
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
    return problems


def redact_url(url: str | None) -> str | None:
    """Mask the password of a URL such as redis://user:pass@host/0."""
    if not url or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:***" if ":" in userinfo else "***"
    return f"{scheme}{sep}{masked}@{hostpart}"
