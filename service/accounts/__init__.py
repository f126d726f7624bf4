"""Accounts and the server-side session lifecycle, shared by pages and API.

What the session holds once logged in (all of it only in Redis):
``uid``, ``epoch`` (the account's credential epoch at the password check),
``auth_time``, ``handle`` (the public name of this session in the sessions
list), ``login_ip``, ``user_agent``, ``account_number`` (the user's sensitive
data shown on the account page), and Flask-WTF's ``csrf_token`` secret.
"""

from __future__ import annotations

import secrets
import time
from functools import wraps

from flask import current_app, g, request, session

from .. import metrics
from ..events import publish
from ..replication import require_replicated
from .passwords import hash_password, verify_password
from .store import (
    AccountGone,
    AccountStore,
    User,
    UsernameTaken,
    ValidationFailed,
    WrongPassword,
    normalize_username,
    password_problem,
    validate_credentials,
)

__all__ = [
    "AccountGone", "AccountStore", "User", "UsernameTaken", "ValidationFailed", "WrongPassword",
    "authenticate", "change_password", "current_user", "delete_account", "describe_sessions",
    "end_session", "end_sessions", "list_sessions", "register", "revoke_other_sessions",
    "revoke_session", "start_session",
]

USER_AGENT_MAX = 200
# Sent with logout and account deletion: the browser drops what it kept.
CLEAR_SITE_DATA = '"cache", "cookies", "storage"'


def accounts() -> AccountStore:
    return current_app.extensions["accounts"]


def _sessions():
    """The Flask session interface (rotation)."""
    return current_app.session_interface


def _records():
    """The session records in Redis (listing and ending other sessions)."""
    return current_app.extensions["session_store"]


def current_user() -> User | None:
    """The logged-in user of this request, or None (cached per request)."""
    if "user" not in g:
        user = accounts().get(session.get("uid"))
        if user is None and "uid" in session:
            _sessions().end(session)  # the account is gone: so is this session
        elif user is not None and session.get("epoch", 0) != user.epoch:
            # Opened with credentials changed since (a login in flight during
            # a password change): refused, on every request. Not ended here:
            # this may be the changing session's own request, racing the
            # change that carries the session over to the new epoch.
            user = None
        g.user = user
    return g.user


def login_required(on_anonymous):
    """Decorator: call the view with the user, or return on_anonymous()."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            user = current_user()
            if user is None:
                return on_anonymous()
            return view(user, *args, **kwargs)

        return wrapped

    return decorator


def register(username, password) -> User:
    name = validate_credentials(username, password)
    return accounts().create(name, hash_password(password))


def authenticate(username, password) -> User | None:
    """The user for these credentials, or None; same work either way."""
    user = accounts().find(normalize_username(username))
    if not verify_password(user.password_hash if user else None, password):
        metrics.login_failures.inc()
        return None
    return user


def start_session(user: User) -> None:
    """Log in: a new session id (the old one dies), fresh CSRF secret."""
    require_replicated()
    _sessions().regenerate(session)
    session.clear()
    # Hex: a handle is typed on command lines (flask sessions end USER HANDLE),
    # where one starting with '-' (1 in 64 of token_urlsafe's) reads as an option.
    handle = secrets.token_hex(12)
    session.update(
        uid=user.uid,
        epoch=user.epoch,  # as read before the password was checked
        auth_time=int(time.time()),
        handle=handle,
        login_ip=request.remote_addr or "",
        user_agent=(request.user_agent.string or "")[:USER_AGENT_MAX],
        account_number=user.account_number,
    )
    g.user = user  # the index entry is written with the session (index_session)


def end_session() -> None:
    """Log out: the session is deleted in Redis when this response is saved."""
    require_replicated()
    uid, handle = session.get("uid"), session.get("handle")
    _sessions().end(session)
    if uid and handle:
        accounts().remove_session(uid, handle)
        metrics.session_event("logged_out")
        publish("session_ended", uid, handles=[handle], reason="logout")
    g.user = None


def index_session(stored_session) -> None:
    """Session store hook: a logged-in session got a new id in Redis."""
    uid, handle = stored_session.get("uid"), stored_session.get("handle")
    if uid and handle:
        accounts().add_session(uid, handle, stored_session.sid,
                               current_app.extensions["settings"].session_absolute_timeout)
        publish("sessions_changed", uid)  # the other sessions' pages list it


def list_sessions(user: User) -> list[dict]:
    """The user's live sessions, this request's first."""
    return describe_sessions(user, current=session.get("handle"))


def describe_sessions(user: User, current: str | None = None) -> list[dict]:
    """The user's live sessions (``current`` first, then the latest seen);
    outside a request too (``flask sessions list``)."""
    store = _records()
    found = []
    for handle, sid in accounts().session_ids(user.uid).items():
        stored = store.peek(sid)
        if (stored is None or stored.data.get("uid") != user.uid
                or stored.data.get("epoch", 0) != user.epoch):
            continue
        found.append({
            "handle": handle,
            "created": stored.created_ms // 1000,
            "last_seen": stored.seen_ms // 1000,
            "ip": stored.data.get("login_ip", ""),
            "user_agent": stored.data.get("user_agent", ""),
            "current": handle == current,
        })
    found.sort(key=lambda s: (not s["current"], -s["last_seen"]))
    return found


def revoke_session(user: User, handle: str) -> bool:
    """End one of the user's sessions by its handle; False if there is none."""
    require_replicated()
    if handle == session.get("handle"):
        end_session()
        return True
    return end_sessions(user, only={handle}) == 1


def revoke_other_sessions(user: User, reason: str = "revoked") -> int:
    require_replicated()
    return end_sessions(user, keep=session.get("handle"), reason=reason)


def end_sessions(user: User, only=None, keep: str | None = None,
                 reason: str = "revoked") -> int:
    """End the user's sessions in Redis (those handles ``only``, all but
    ``keep``); outside a request too (``flask sessions end``). How many
    there were. This request's own session ends with end_session(). Their
    live-event sockets hear why (service/events)."""
    ended = {h: sid for h, sid in accounts().session_ids(user.uid).items()
             if h != keep and (only is None or h in only)}
    for handle, sid in ended.items():
        _records().delete(sid)
        accounts().remove_session(user.uid, handle)
    metrics.session_event("revoked", len(ended))
    if ended:
        publish("session_ended", user.uid, handles=list(ended), reason=reason)
    return len(ended)


def change_password(user: User, current_password, new_password) -> None:
    """New password; every other session ends and this one gets a new id."""
    require_replicated()
    problems = password_problem(new_password, "new_password")
    if problems:
        raise ValidationFailed(problems)
    if not verify_password(user.password_hash, current_password):
        raise WrongPassword("current password is wrong")
    try:
        session["epoch"] = accounts().set_password(user.uid, hash_password(new_password))
    except AccountGone:
        # Deleted (another tab) while the new hash was computed: so is this
        # session; the caller answers as to anyone not logged in.
        _sessions().end(session)
        g.user = None
        raise
    revoke_other_sessions(user, reason="password")
    # A new id for this session too; its CSRF secret carries over, so the
    # client's token keeps working (the API answers 204 with no new token),
    # and its absolute timeout still counts from login.
    _sessions().rotate(session)


def delete_account(user: User, password) -> None:
    require_replicated()
    if not verify_password(user.password_hash, password):
        raise WrongPassword("password is wrong")
    sids = accounts().session_ids(user.uid).values()
    for sid in sids:
        _records().delete(sid)
    metrics.session_event("revoked", len(sids))
    accounts().drop_index(user.uid)
    accounts().delete(user)
    _sessions().end(session)
    publish("session_ended", user.uid, reason="deleted")  # every session
    g.user = None
