"""Abuse limits on credentials and new sessions (Flask-Limiter, counters in Redis).

* ``auth_per_ip``: every attempt that submits a password (login,
  registration, password change, account deletion) counts against the client
  address (AUTH_RATE_LIMIT).
* ``failures_per_account``: failed logins (401) count against the pair
  (account named in the request, client address) (LOGIN_FAILURE_LIMIT).
  Keying on the pair means an attacker failing logins for a victim's account
  from elsewhere exhausts only their own budget: the victim, from their own
  address, can still log in. The API's and the form's login share it.
* ``failures_per_user``: the same for the logged-in user's own password
  checks (password change, account deletion, API and forms: one budget),
  keyed on the session's user, never on anything in the request body.
* ``anonymous_session_per_ip``: new session records of visitors who are
  not logged in, per client address (ANONYMOUS_SESSION_LIMIT), checked by the
  session layer itself (``before_anonymous_record``) when such a record is
  about to be made. Their CSRF tokens need none (``service/presessions.py``).

Over a limit: 429 with Retry-After. Failures are counted when the response
is known, so a burst of parallel guesses can exceed LOGIN_FAILURE_LIMIT by
what AUTH_RATE_LIMIT still lets through from that address.
"""

from __future__ import annotations

import math
import time

from flask import current_app, request, session
from flask_limiter.util import get_remote_address
from limits import parse_many
from werkzeug.exceptions import TooManyRequests

from .accounts.store import USERNAME_PATTERN, normalize_username
from .extensions import limiter

# Only attempts count: showing a login form (GET) does not.
ATTEMPTS = ["POST", "DELETE"]


def _settings():
    return current_app.extensions["settings"]


def _named_account_and_address() -> str:
    body = request.get_json(silent=True) if request.is_json else request.form
    username = body.get("username") if hasattr(body, "get") else None
    name = normalize_username(username)
    # The key holds only a name an account can have: a megabyte of name (more
    # after NFKC) would otherwise be a Redis key of that size per attempt.
    if not USERNAME_PATTERN.fullmatch(name):
        name = ""
    return f"{name}|{get_remote_address()}"


def _user_and_address() -> str:
    return f"uid:{session.get('uid', '')}|{get_remote_address()}"


def _failed(response) -> bool:
    return response.status_code == 401


auth_per_ip = limiter.shared_limit(
    lambda: _settings().auth_rate_limit, scope="auth-per-ip", methods=ATTEMPTS
)
# Shared, not per route: the API's and the form's login count against one
# budget, and so do every route that checks a logged-in user's password.
failures_per_account = limiter.shared_limit(
    lambda: _settings().login_failure_limit,
    scope="login-failures",
    key_func=_named_account_and_address,
    deduct_when=_failed,
    methods=ATTEMPTS,
)
failures_per_user = limiter.shared_limit(
    lambda: _settings().login_failure_limit,
    scope="password-failures",
    key_func=_user_and_address,
    deduct_when=_failed,
    methods=ATTEMPTS,
)


def anonymous_session_per_ip() -> None:
    """Session hook: a visitor who is not logged in is about to get a session
    record. Count it against the address (ANONYMOUS_SESSION_LIMIT); over the
    limit, 429 with Retry-After and nothing is stored."""
    key = (current_app.config["RATELIMIT_KEY_PREFIX"], "anonymous-session", get_remote_address())
    strategy = limiter.limiter
    # Every limit of the setting counts ("30/minute;200/hour"), as `check` accepts.
    refused = [item for item in parse_many(_settings().anonymous_session_limit)
               if not strategy.hit(item, *key)]
    if not refused:
        return
    reset_at = max(strategy.get_window_stats(item, *key).reset_time for item in refused)
    raise TooManyRequests(
        "Too many new sessions from your address; please retry later.",
        retry_after=max(1, math.ceil(reset_at - time.time())),
    )
