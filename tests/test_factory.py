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


def test_the_kit_layers_call_each_other_as_bound_methods(app):
    """Each layer of the kit's WSGI stack is handed on as a bound method of a
    Python function, which CPython calls inline; an object with __call__
    would start a new C-level frame, kept per waiting greenlet
    (service.inline.direct)."""
    from types import MethodType

    from werkzeug.middleware.proxy_fix import ProxyFix

    from service.inline import direct
    from service.middleware import RequestLog, TrustedProxy

    proxy = app.wsgi_app
    assert isinstance(proxy, MethodType) and isinstance(proxy.__self__, TrustedProxy)
    fixed = proxy.__self__.fixed
    assert isinstance(fixed, MethodType) and isinstance(fixed.__self__, ProxyFix)
    log = fixed.__self__.app
    assert isinstance(log, MethodType) and isinstance(log.__self__, RequestLog)
    assert proxy.__self__.app is log  # untrusted peers skip ProxyFix, same next layer
    # The Flask app itself, as the worker hands it to gunicorn:
    served = direct(app)
    assert isinstance(served, MethodType) and served.__self__ is app
    assert served.__func__ is type(app).__call__

    def plain(environ, start_response):
        return []

    assert direct(plain) is plain  # functions and methods are passed on as they are
    assert direct(served) is served
