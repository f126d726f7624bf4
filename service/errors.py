"""Error responses: JSON for API clients, a small HTML page for browsers.

JSON errors look like ``{"error": "<code>", "message": "..."}``. A Redis
outage anywhere in a request, including while the session is loaded or saved,
becomes a 503 with ``Retry-After``; nothing leaks a traceback.
"""

from __future__ import annotations

import logging

from flask import Request, current_app, json, render_template, request
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFError
from redis.exceptions import OutOfMemoryError, RedisError
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    InternalServerError,
    ServiceUnavailable,
)

from . import metrics
from .logformat import REQUEST_ID_KEY, ROUTE_KEY
from .replication import NotReplicated

RETRY_AFTER_SECONDS = 5

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class InvalidJSON(BadRequest):
    error_code = "invalid_json"
    description = "The request body is not valid JSON."


class StoreUnavailable(ServiceUnavailable):
    error_code = "store_unavailable"
    description = (
        "The session and data store (Redis) is unreachable right now. "
        "Nothing was changed; please retry in a few seconds."
    )


class StoreNotConfirmed(ServiceUnavailable):
    """REDIS_WAIT_REPLICAS: the write happened on the primary, but too few
    replicas confirmed it in time (service/replication.py)."""

    error_code = "store_unavailable"
    description = (
        "The change was made, but no replica of the data store confirmed it in "
        "time, so a failover now could undo it. Check whether it took effect "
        "before retrying."
    )


class StoreFull(ServiceUnavailable):
    error_code = "store_full"
    description = (
        "The data store (Redis) is full right now, so this request could not "
        "store what it needed to; please retry later."
    )


class StrictJSONProvider(DefaultJSONProvider):
    """Parsing as usual, but JSON nested deeper than Python's recursion limit
    and strings with a lone surrogate (``"\\ud800"``: no UTF-8 text, so
    Argon2 or Redis would fail on it) are invalid JSON: 400, not a
    RecursionError or a UnicodeEncodeError deep in a view."""

    def loads(self, s, **kwargs):
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if _has_lone_surrogate(value):
            raise ValueError("JSON string with a lone surrogate")
        return value


def _has_lone_surrogate(value) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class JSONRequest(Request):
    """The app's request class: bad JSON is a JSON 400, and the URL rule the
    request matched is noted in the WSGI environ (logformat.ROUTE_KEY) as
    routing sets it, for the metrics' route label and the watchdog's log
    line. A setter costs less than a before_request hook and runs before
    any hook that may answer first."""

    @property
    def url_rule(self):
        return self.__dict__.get("url_rule")

    @url_rule.setter
    def url_rule(self, rule):
        self.__dict__["url_rule"] = rule
        if rule is not None:
            self.environ[ROUTE_KEY] = rule.rule

    def on_json_loading_failed(self, e):
        if e is None:  # wrong Content-Type: let Werkzeug answer 415
            return super().on_json_loading_failed(e)
        raise InvalidJSON()


def wants_json() -> bool:
    if request.path.startswith("/api/") or request.is_json:
        return True
    # On a tie (Accept: */*) HTML wins: the first listed type is preferred.
    best = request.accept_mimetypes.best_match(("text/html", "application/json"))
    return best == "application/json"


def error_response(exc: HTTPException):
    code = exc.code or 500
    error = getattr(exc, "error_code", None) or CODES.get(code) or exc.name.lower().replace(" ", "_")
    message = exc.description or exc.name
    # A server error shows the request id: a user's report leads to the log line.
    request_id = request.environ.get(REQUEST_ID_KEY) if code >= 500 else None
    if code == 429:
        metrics.rate_limited.inc()
    # get_response() carries the exception's own headers (Allow, Retry-After).
    response = exc.get_response()
    if wants_json():
        body = {"error": error, "message": message}
        if request_id:
            body["request_id"] = request_id
        response.set_data(json.dumps(body) + "\n")
        response.mimetype = "application/json"
    else:
        response.set_data(render_template("error.html", code=code, title=exc.name,
                                          message=message, request_id=request_id))
        response.mimetype = "text/html"
    return response


def handle_redis_error(exc: RedisError):
    metrics.redis_errors.labels(type(exc).__name__).inc()
    if isinstance(exc, OutOfMemoryError):  # maxmemory reached under noeviction
        current_app.logger.warning("Redis is full: %s", exc)
        return error_response(StoreFull(retry_after=RETRY_AFTER_SECONDS))
    if isinstance(exc, NotReplicated):
        current_app.logger.warning("Redis replicas did not confirm a write: %s", exc)
        return error_response(StoreNotConfirmed(retry_after=RETRY_AFTER_SECONDS))
    current_app.logger.warning("Redis unavailable: %s: %s", type(exc).__name__, exc)
    return error_response(StoreUnavailable(retry_after=RETRY_AFTER_SECONDS))


def handle_internal_error(exc: InternalServerError):
    # Errors raised while Flask opens or saves the session skip the normal
    # handler lookup and arrive here wrapped in a 500 (Flask-Session #45, #82).
    original = getattr(exc, "original_exception", None)
    if isinstance(original, RedisError):
        return handle_redis_error(original)
    return error_response(InternalServerError())


def handle_csrf_error(exc: CSRFError):
    metrics.csrf_failures.inc()
    forbidden = Forbidden(
        f"{exc.description} Fetch a token from GET /api/csrf (or reload the form) "
        "and send it in the X-CSRF-Token header or the csrf_token field."
    )
    forbidden.error_code = "csrf_failed"
    return error_response(forbidden)


def without_redis_tracebacks(record: logging.LogRecord) -> bool:
    """Logging filter: drop Flask's traceback of a Redis error.

    A Redis outage is logged once per request as a warning by
    handle_redis_error; Flask's own ERROR with a traceback (``log_exception``,
    for errors raised while the session is saved) would drown the log."""
    return not (record.exc_info and isinstance(record.exc_info[1], RedisError))


def init_app(app) -> None:
    app.request_class = JSONRequest
    app.json = StrictJSONProvider(app)
    app.logger.addFilter(without_redis_tracebacks)
    app.register_error_handler(CSRFError, handle_csrf_error)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(InternalServerError, handle_internal_error)
    app.register_error_handler(RedisError, handle_redis_error)
