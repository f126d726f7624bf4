"""The Flask application package.

Only the standard library and python-dotenv are imported at module level, so
gunicorn.conf.py can read the settings in the master without importing
ssl-using libraries before gevent patches the workers.
"""

from __future__ import annotations

from .config import ConfigError, Settings, load_dotenv_file

__all__ = ["ConfigError", "Settings", "create_app", "init_kit"]


def create_app(settings: Settings | None = None):
    """Build a new app. Without settings they are read from the environment
    (and ``.env``); invalid settings raise ConfigError naming what to fix."""
    from flask import Flask

    app = Flask(__name__)
    init_kit(app, settings)
    register_accounts(app)
    register_blueprints(app)
    return app


def init_kit(app, settings: Settings | None = None):
    """Give a Flask app the kit: settings, the shared Redis client, server-side
    sessions, CSRF, rate limits, security headers, error pages and proxy
    handling, in that order. create_app calls it; so can the factory of an
    existing app (README.md, "Serving an existing Flask app"), after its own
    configuration, since these settings win, and before anything else wraps
    ``app.wsgi_app``. Returns the app."""
    if settings is None:
        load_dotenv_file()
        settings = Settings.from_env()
    settings.require_valid()

    from flask import Blueprint

    from . import (
        errors,
        extensions,
        middleware,
        ratelimit,
        redis_client,
        replication,
        security,
        sessions,
    )

    middleware.configure_logging(settings)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TRUSTED_HOSTS=list(settings.allowed_hosts) or None,
        # Development: an edited template is served at once (scripts/run
        # reloads the workers for Python modules: service/devreload.py).
        TEMPLATES_AUTO_RELOAD=settings.env == "development",
    )
    app.extensions["settings"] = settings

    redis_client.init_app(app, settings)
    client = app.extensions["redis"]
    sessions.init_app(app, client, settings)
    app.session_interface.before_anonymous_record.append(ratelimit.anonymous_session_per_ip)
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
    if app.import_name != __name__:
        # Another app's templates: the kit's error.html (and base.html) come
        # after its own, so an app that has an error.html keeps it.
        app.register_blueprint(Blueprint("kit", __name__, template_folder="templates"))

    app.wsgi_app = middleware.wrap(app.wsgi_app, settings)
    return app


def register_accounts(app) -> None:
    """Accounts in the shared Redis, each user's sessions indexed by the
    session store, and the flask commands that manage them (service/cli.py)."""
    from . import cli
    from .accounts import AccountStore, index_session

    app.extensions["accounts"] = AccountStore(app.extensions["redis"])
    app.session_interface.on_new_id.append(index_session)
    cli.init_app(app)


def register_blueprints(app) -> None:
    """The kit's own features, one blueprint each."""
    from .api import bp as api_bp
    from .events import bp as events_bp
    from .health import bp as health_bp
    from .pages import bp as pages_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(events_bp)
