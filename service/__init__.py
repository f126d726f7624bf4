"""The Flask application package.

Only the standard library and python-dotenv are imported at module level, so
gunicorn.conf.py can read the settings in the master without importing
ssl-using libraries before gevent patches the workers.
"""

from __future__ import annotations

from .config import ConfigError, Settings, load_dotenv_file

__all__ = ["ConfigError", "Settings", "create_app"]


def create_app(settings: Settings | None = None):
    """Build a new app. Without settings they are read from the environment
    (and ``.env``); invalid settings raise ConfigError naming what to fix."""
    if settings is None:
        load_dotenv_file()
        settings = Settings.from_env()
    settings.require_valid()

    from flask import Flask

    from . import errors, extensions, middleware, redis_client, replication, security, sessions
    from .accounts import AccountStore, index_session

    middleware.configure_logging(settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TRUSTED_HOSTS=list(settings.allowed_hosts) or None,
    )
    app.extensions["settings"] = settings

    redis_client.init_app(app, settings)
    client = app.extensions["redis"]
    sessions.init_app(app, client, settings)
    app.extensions["accounts"] = AccountStore(client)
    app.session_interface.on_new_id.append(index_session)
    replication.init_app(app, settings)
    app.config.update(
        # The token is bound to the session's secret, which ends with the
        # session; the Referer check is off because the token, SameSite and
        # the __Host- cookie already cover it and API clients send no Referer.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=False,
        # The pool carries the real location (limits knows no unix:// scheme).
        RATELIMIT_STORAGE_URI="redis://",
        RATELIMIT_STORAGE_OPTIONS={"connection_pool": client.connection_pool},
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_KEY_PREFIX="ratelimit",
    )
    extensions.csrf.init_app(app)
    extensions.limiter.init_app(app)
    security.init_app(app)
    errors.init_app(app)

    from .api import bp as api_bp
    from .health import bp as health_bp
    from .pages import bp as pages_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)

    app.wsgi_app = middleware.wrap(app.wsgi_app, settings)
    return app
