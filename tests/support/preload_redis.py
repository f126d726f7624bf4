"""A deliberately mis-ordered entry point: gunicorn --preload imports this in
the master, so redis (and ssl) are imported before gevent patches the worker.
The boot guard must refuse to run it."""

import redis  # noqa: F401  (the mistake under test)

from tests.support.testapp import app  # noqa: F401
