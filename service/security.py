"""Security headers (built with the ``secure`` package) for every response.

Two profiles: HTML pages get a strict CSP that allows only same-origin
scripts, styles and images; everything else (JSON, text) gets a CSP that
allows nothing at all. Headers are added with ``setdefault``, so a view that
sets one itself keeps its own value and no header is ever sent twice.

HSTS is sent by nginx, not here: nginx terminates TLS, so it is the one layer
that sees every HTTPS response (static files, redirects, its own 502 page) and
knows the connection is secure. Sending it from both layers duplicates it,
which graders treat as invalid.
"""

from __future__ import annotations

from secure import (
    ContentSecurityPolicy,
    CrossOriginOpenerPolicy,
    CrossOriginResourcePolicy,
    PermissionsPolicy,
    ReferrerPolicy,
    Secure,
    XContentTypeOptions,
    XFrameOptions,
)
from werkzeug.datastructures import Headers

NONE, SELF = "'none'", "'self'"


def _permissions() -> PermissionsPolicy:
    policy = PermissionsPolicy()
    for feature in (
        "accelerometer", "browsing-topics", "camera", "display-capture", "geolocation",
        "gyroscope", "magnetometer", "microphone", "payment", "usb",
    ):
        policy.add_directive(feature)
    return policy


def _profile(csp: ContentSecurityPolicy) -> tuple[tuple[str, str], ...]:
    return Secure(
        csp=csp.frame_ancestors(NONE).base_uri(NONE).object_src(NONE),
        coop=CrossOriginOpenerPolicy().same_origin(),
        corp=CrossOriginResourcePolicy().same_origin(),
        permissions=_permissions(),
        referrer=ReferrerPolicy().same_origin(),
        xcto=XContentTypeOptions(),
        xfo=XFrameOptions().deny(),
    ).header_items()


HTML_HEADERS = _profile(
    ContentSecurityPolicy()
    .default_src(NONE)
    .script_src(SELF)
    .style_src(SELF)
    .img_src(SELF)
    .font_src(SELF)
    .connect_src(SELF)
    .manifest_src(SELF)
    .form_action(SELF)
)
API_HEADERS = _profile(ContentSecurityPolicy().default_src(NONE).form_action(NONE))


# Each profile with its names lowercased once, not per response. Werkzeug's
# Headers checks every value it is given (no newline); these are checked once
# here, through Headers itself, so the response can take them as they are.
_PROFILES = {
    profile: tuple((item[0].lower(), item) for item in Headers(list(profile)).to_wsgi_list())
    for profile in (HTML_HEADERS, API_HEADERS)
}
if not isinstance(getattr(Headers(), "_list", None), list):  # werkzeug 3.x keeps its items there
    raise TypeError("werkzeug's Headers no longer keeps a _list: see service/security.py")


def add_security_headers(response):
    headers = response.headers
    mimetype = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    profile = _PROFILES[HTML_HEADERS if mimetype == "text/html" else API_HEADERS]
    # One pass over the response's headers (setdefault per header was one
    # pass each: ~30 us per response, bench/request_cost.py), and the checked
    # items appended to Headers' own list: Headers.extend checks each value
    # again on every response (~5 us, bench/request_cost.py).
    present = {name.lower() for name, _ in headers}
    headers._list.extend([item for lowered, item in profile if lowered not in present])
    return response


def init_app(app) -> None:
    app.after_request(add_security_headers)
