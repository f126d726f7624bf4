"""An existing Flask app served with the kit (README.md, "Serving an existing
Flask app"): its factory builds the app as before and calls init_kit last.

    gunicorn --config gunicorn.conf.py 'examples.outside_app:create_app()'
"""

from __future__ import annotations

from flask import Flask, session

from service import init_kit


def create_app(settings=None):
    app = Flask(__name__)
    # The app's own configuration and blueprints first ...

    @app.get("/")
    def index():
        return "<!doctype html><title>Shop</title><p>Welcome to the shop.</p>"

    @app.get("/visits")
    def visits():
        session["visits"] = session.get("visits", 0) + 1  # kept in Redis, not in the cookie
        return {"visits": session["visits"]}

    # ... then the kit: settings from the environment (or these), Redis,
    # sessions, CSRF, rate limits, headers, error pages and proxy handling.
    return init_kit(app, settings)
