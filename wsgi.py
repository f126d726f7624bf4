"""The WSGI entry point: gunicorn serves ``wsgi:app``.

Under gunicorn's gevent worker the standard library is already patched when
this module is imported; gunicorn.conf.py checks that it stayed that way.

In development an app that fails to load (an error at import time in a file
just saved) answers 500 and prints the traceback, so scripts/run keeps
running and the next save (service/devreload.py) loads the fixed code.
Anywhere else the worker fails to boot and gunicorn stops, as it should.
"""

import os

try:
    from service import create_app

    app = create_app()
except Exception:
    if (os.environ.get("APP_ENV") or "").strip().lower() != "development":
        raise
    import traceback

    traceback.print_exc()
    FAILED = b"The app failed to load; the traceback is in scripts/run's output. Fix and save.\n"

    def app(environ, start_response):
        start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                                     ("Content-Length", str(len(FAILED)))])
        return [FAILED]
