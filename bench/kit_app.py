"""The full kit (service.create_app, production settings) with the bench routes.

Loaded by bench/peers.py as ``bench.kit_app:app`` under the project's
gunicorn.conf.py; never part of the deployed package.
"""

from flask import Blueprint

from bench.twins import add_routes
from service import create_app
from service.redis_client import get_redis

bp = Blueprint("bench", __name__)
add_routes(bp, get_redis)

app = create_app()
app.register_blueprint(bp)
