"""Refuse to run a gevent worker whose monkey-patching came too late.

gunicorn's gevent worker patches the standard library after fork. Anything
the master imported before that keeps references to the blocking originals:
a client library that grabbed ``socket.socket`` or ``ssl.SSLContext`` then
blocks the whole worker, or fails in odd ways (gevent #1016). The check runs
in ``post_worker_init``, after patching and after the app was loaded.

Imports only the standard library: it runs in the master before patching.
"""

from __future__ import annotations

import sys

# Client libraries that must be imported only after patching.
CLIENT_LIBRARIES = (
    "redis", "urllib3", "requests", "httpx", "httpcore", "aiohttp", "psycopg2",
    "psycopg", "pymysql", "pymongo", "grpc", "botocore", "boto3", "kombu",
    "elasticsearch", "pika",
)
MUST_BE_PATCHED = ("socket", "ssl", "select", "time", "threading")
# Original objects that no module outside the stdlib should hold on to.
ORIGINALS = (("socket", "socket"), ("ssl", "SSLContext"), ("ssl", "SSLSocket"))
OWNERS = ("socket", "_socket", "ssl", "_ssl", "gevent", "selectors", "asyncio", "multiprocessing")


def imported_clients() -> list[str]:
    """Client libraries already imported (call before patching)."""
    return sorted(name for name in CLIENT_LIBRARIES if name in sys.modules)


def problems(imported_before_patch: list[str]) -> list[str]:
    """What is wrong with this (already patched) worker; empty when fine."""
    from gevent import monkey

    found = []
    unpatched = [m for m in MUST_BE_PATCHED if not monkey.is_module_patched(m)]
    if unpatched:
        found.append(f"standard library modules not monkey-patched: {', '.join(unpatched)}")
    if imported_before_patch:
        found.append(
            "imported before gevent patched the standard library: "
            f"{', '.join(imported_before_patch)} (imported in the gunicorn master, e.g. by "
            "gunicorn.conf.py or with preload_app; import them only from the app)"
        )
    holders = _modules_holding_originals(monkey)
    if holders:
        found.append(
            "modules keep unpatched socket/ssl objects (imported before patching): "
            + ", ".join(holders)
        )
    return found


def _modules_holding_originals(monkey) -> list[str]:
    originals = []
    for module, name in ORIGINALS:
        try:
            originals.append(monkey.get_original(module, name))
        except (AttributeError, ImportError):
            continue
    patched = {id(getattr(sys.modules[m], n)) for m, n in ORIGINALS if m in sys.modules}
    originals = [o for o in originals if id(o) not in patched]
    holders = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in OWNERS or module is None:
            continue
        namespace = getattr(module, "__dict__", {})
        for attr, value in list(namespace.items()):
            if any(value is o for o in originals):
                holders.append(f"{name}.{attr}")
    return sorted(holders)
