"""A WSGI callable that only sleeps 50 ms (gevent-patched): what gunicorn and
gevent alone hold per connection in flight (bench/inflight_memory.py)."""

import time


def app(environ, start_response):
    time.sleep(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
