"""The WSGI entry point: gunicorn serves ``wsgi:app``.

Under gunicorn's gevent worker the standard library is already patched when
this module is imported; gunicorn.conf.py checks that it stayed that way.
"""

from service import create_app

app = create_app()
