"""create_app() builds an app only from valid settings (in process, no server)."""

import pytest

from service import ConfigError, Settings, create_app
from tests.support.processes import base_env


def test_the_app_from_test_settings_serves(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_refuses_settings_with_problems_and_lists_every_one(redis_server):
    settings = Settings.from_env(base_env(redis_server.url, APP_ENV="production",
                                          SECRET_KEY="changeme", SESSION_COOKIE_NAME="sid"))
    with pytest.raises(ConfigError) as refused:
        create_app(settings)
    message = str(refused.value)
    assert message.startswith("Refusing to start (production configuration is not safe to run)")
    for problem in ("SECRET_KEY is a well-known placeholder", "must start with __Host-",
                    "ALLOWED_HOSTS is not set"):
        assert problem in message


@pytest.mark.parametrize("name", ["AUTH_RATE_LIMIT", "LOGIN_FAILURE_LIMIT",
                                  "ANONYMOUS_SESSION_LIMIT"])
def test_refuses_a_rate_limit_it_cannot_parse(redis_server, name):
    settings = Settings.from_env(base_env(redis_server.url, **{name: "lots"}))
    with pytest.raises(ConfigError, match=f"{name}='lots' is not a rate limit"):
        create_app(settings)
