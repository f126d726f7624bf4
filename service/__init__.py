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

    from . import errors, middleware, redis_client, security, sessions

    middleware.configure_logging(settings)
    app = errors.Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TRUSTED_HOSTS=list(settings.allowed_hosts) or None,
    )
    app.extensions["settings"] = settings

    redis_client.init_app(app, settings)
    sessions.init_app(app, app.extensions["redis"], settings)
    security.init_app(app)
    errors.init_app(app)

    from .health import bp as health_bp
    from .pages import bp as pages_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(pages_bp)

    app.wsgi_app = middleware.wrap(app.wsgi_app, settings)
    return app
