"""Bare Flask with the bench routes: stock cookie sessions, or with
``PEER_SESSIONS=flask-session`` Flask-Session's stock Redis interface.

Run by bench/peers.py on stock gunicorn gevent and on granian (WSGI).
"""

import os

import redis
from flask import Flask

from bench.twins import add_routes

client = redis.Redis.from_url(os.environ["REDIS_URL"])  # redis-py's default pool

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
if os.environ.get("PEER_SESSIONS") == "flask-session":
    from flask_session import Session

    app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client)
    Session(app)

add_routes(app, lambda: client)
