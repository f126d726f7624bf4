"""Log line formats (text or JSON) and the request each line belongs to.

Standard library only (greenlet aside, which gevent already loaded): the
gunicorn master uses the JSON format for its own messages (gunicorn.conf.py,
``logconfig_dict``) before gevent patches anything.

While a request runs, its WSGI environ is registered under the current
greenlet (``running``); every record formatted meanwhile carries that
request's id, exceptions included. Under threads, each thread has its own
main greenlet, so the same lookup works there. The blocked-hub watchdog
(service/watchdog.py) reads the same registry from its monitor thread.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from greenlet import getcurrent

REQUEST_ID_KEY = "service.request_id"
ROUTE_KEY = "service.route"

# greenlet -> the WSGI environ of the request it is serving.
running: dict = {}


def _running() -> dict:
    # The registry of the module as imported now: gunicorn's JSON formatter
    # is made in the master, whose copy of this module gunicorn.conf.py forgets
    # before each fork (the worker imports it afresh with the app).
    module = sys.modules.get(__name__)
    return module.running if module is not None else running


def current_environ(greenlet=None) -> dict | None:
    return _running().get(greenlet or getcurrent())


def _request_id(record) -> str | None:
    given = getattr(record, "request_id", None)
    if given:
        return given
    environ = _running().get(getcurrent())
    return environ.get(REQUEST_ID_KEY) if environ else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _escape(text: str, pattern=_CONTROL) -> str:
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TextFormatter(logging.Formatter):
    """One line per record; a traceback follows on indented lines.

    The message (which may hold a decoded path with %0a) has its control
    characters escaped, so nobody can forge a line. A traceback keeps its
    line breaks, but every line of it is indented: a newline in an
    exception's message cannot start what looks like a record either.
    """

    def __init__(self, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s", **kwargs):
        super().__init__(fmt, **kwargs)

    def format(self, record):
        # A ``stack`` given in ``extra`` is shown like a traceback.
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = _escape(self.formatMessage(record))
        request_id = _request_id(record)
        if request_id:
            line = f"{line} request_id={request_id}"
        extra = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        if getattr(record, "stack", None):
            extra.append(record.stack)
        for block in extra:
            body = _escape(block.rstrip("\n"), _CONTROL_BUT_NEWLINE)
            line += "\n" + "\n".join("    " + part for part in body.split("\n"))
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, whatever the message holds."""

    FIELDS = ("method", "path", "status", "remote_addr", "duration_ms")

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id:
            entry["request_id"] = request_id
        for name in self.FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info or getattr(record, "stack", None):
            entry["stack"] = getattr(record, "stack", None) or self.formatStack(record.stack_info)
        return json.dumps(entry)


def formatter(log_format: str) -> logging.Formatter:
    return JSONFormatter() if log_format == "json" else TextFormatter()
