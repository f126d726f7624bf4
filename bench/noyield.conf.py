"""Bench-only gunicorn config: the project's gunicorn.conf.py minus the yield.

The baseline of bench/workers.py is stock gunicorn gevent behaviour. This file
runs the project's config unchanged (runpy, so every setting, bind and hook is
the same) and then replaces only its post_request hook (gevent.idle() after
every request) with a no-op. Used as `--config bench/noyield.conf.py`.
"""

import runpy
from pathlib import Path

_project = runpy.run_path(str(Path(__file__).resolve().parents[1] / "gunicorn.conf.py"))
globals().update({k: v for k, v in _project.items() if not k.startswith("__")})


def post_request(worker, req, environ, resp):
    """No yield: a buffered next request on a keep-alive connection is served at once."""
