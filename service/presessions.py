"""Pre-sessions: the CSRF secret of a visitor with nothing else to store,
kept in the session cookie instead of Redis. Nothing of Flask.

A visitor who is not logged in needs a CSRF token (the login and registration
forms, ``GET /api/csrf``) but nothing else from the server. A Redis record
holding only that secret cost one key per request without a cookie (358
bytes, kept for the idle timeout), so one client could grow Redis without
bound. Instead the cookie carries a signed value (itsdangerous'
``TimestampSigner``, keyed with SECRET_KEY)::

    <random id>.<issued at>.<signed at>.<signature>

and the CSRF secret is an HMAC of the random id under SECRET_KEY: as
unguessable as a stored random secret, bound to this cookie, and needing no
server-side state. A pre-session keeps the timeouts of a stored session: it
ends ``idle_timeout`` after it was last signed (it is signed anew when used
after half of that) and ``absolute_timeout`` after it was issued.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadData, TimestampSigner

_PAYLOAD = re.compile(r"([A-Za-z0-9_-]{43})\.([0-9]{1,12})")


@dataclass(frozen=True)
class PreSession:
    cookie: str  # the signed value, as in the cookie
    rid: str  # the random id
    issued: int  # seconds since the epoch
    signed: int


class PreSessions:
    """Issue, check and renew pre-session cookie values."""

    def __init__(self, secret_key: str, idle_timeout: int, absolute_timeout: int):
        self._signer = TimestampSigner(secret_key, salt="service.pre-session")
        self._csrf_key = hmac.new(secret_key.encode(), b"service.pre-session.csrf",
                                  hashlib.sha256).digest()
        self.idle = idle_timeout
        self.absolute = absolute_timeout

    def issue(self) -> PreSession:
        return self._sign(secrets.token_urlsafe(32), int(time.time()))

    def open(self, cookie: str) -> PreSession | None:
        """The pre-session this cookie value names, or None (not one of ours,
        tampered with, or past its idle or absolute timeout)."""
        try:
            payload, signed = self._signer.unsign(cookie, max_age=self.idle,
                                                  return_timestamp=True)
        except BadData:
            return None
        match = _PAYLOAD.fullmatch(payload.decode("ascii", "replace"))
        if match is None:
            return None
        issued = int(match[2])
        if time.time() - issued >= self.absolute:
            return None
        return PreSession(cookie, match[1], issued, int(signed.timestamp()))

    def renewed(self, pre: PreSession) -> PreSession | None:
        """The same pre-session signed now, once half its idle timeout has
        passed since it was last signed; None while it is fresh enough."""
        if time.time() - pre.signed < self.idle / 2:
            return None
        return self._sign(pre.rid, pre.issued)

    def csrf_secret(self, pre: PreSession) -> str:
        return hmac.new(self._csrf_key, pre.rid.encode(), hashlib.sha256).hexdigest()

    def _sign(self, rid: str, issued: int) -> PreSession:
        cookie = self._signer.sign(f"{rid}.{issued}").decode()
        return PreSession(cookie, rid, issued, int(time.time()))
