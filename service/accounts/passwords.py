"""Password hashing with Argon2id (argon2-cffi), off the gevent hub.

Argon2id is the first choice of the OWASP Password Storage Cheat Sheet; the
parameters are its minimum (19 MiB, 2 passes, 1 lane): ~35 ms per hash here.
That is CPU a gevent worker must not spend on its hub, where it would stall
every other request of the worker, so hashing runs in gevent's thread pool
(argon2-cffi releases the GIL) while the request's greenlet waits.
"""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def _off_hub(function, *args):
    from gevent import get_hub
    from gevent.monkey import is_module_patched

    if not is_module_patched("socket"):
        return function(*args)
    return get_hub().threadpool.apply(function, args)


def hash_password(password: str) -> str:
    return _off_hub(_hasher.hash, password)


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(stored_hash: str | None, password) -> bool:
    """Check a password. Without a stored hash (no such account) spend the
    same time and fail, so timing does not tell whether an account exists.
    Anything but a string of sane length fails too."""
    if not isinstance(password, str) or len(password) > 1024:
        password = ""
    if not stored_hash:
        _off_hub(_verify, _dummy_hash(), password)
        return False
    return _off_hub(_verify, stored_hash, password)


@cache
def _dummy_hash() -> str:
    return _hasher.hash("no account has this password")
