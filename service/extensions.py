"""Extension objects, unbound; create_app binds them with init_app."""

from functools import partial

import flask_limiter
from flask import current_app, request
from flask.globals import request_ctx
from flask_limiter.util import get_remote_address
from flask_wtf import csrf as flask_wtf_csrf


class CSRFProtect(flask_wtf_csrf.CSRFProtect):
    """Flask-WTF's CSRF check, asking the cheap question first.

    Its before-request hook looks up view and blueprint exemptions before it
    looks at the method; a GET, HEAD or OPTIONS needs neither (the result is
    the same: no check).
    """

    def protect(self, apply_exemptions=False):
        if request.method not in current_app.config["WTF_CSRF_METHODS"]:
            return
        super().protect(apply_exemptions)


# Flask-WTF: a well-kept CSRF implementation (HMAC-signed tokens bound to a
# secret kept in the server-side session), with form helpers for the pages.
csrf = CSRFProtect()


class Limiter(flask_limiter.Limiter):
    """Flask-Limiter without its per-request work where no limit applies.

    Its three hooks run on every request: the before-request check resolves
    app-wide limits (default, application, blueprint and meta limits), the
    after-request hook and the teardown read and reset its request state.
    Our limits are all decorators (service/ratelimit.py), which check
    themselves when their view runs; so the before-request check runs only
    while some app-wide limit is configured, and the other two only on a
    request that touched a limit. On /hello that took a request from 290 to
    186 us of CPU (bench/request_cost.py, docs/performance.md).
    """

    def init_app(self, app):
        super().init_app(app)
        hooks = app.after_request_funcs.setdefault(None, [])
        for index, hook in enumerate(hooks):
            if isinstance(hook, partial) and hook.args == (self,):
                hooks[index] = self._after_request(hook)
                break
        else:  # a Flask-Limiter upgrade changed how the hook is registered
            raise RuntimeError("Flask-Limiter's after_request hook not found")

    def _has_app_wide_limits(self) -> bool:
        manager = self.limit_manager
        return bool(manager._application_limits or manager._default_limits
                    or manager._blueprint_limits or self._meta_limits)

    def _check_request_limit(self, callable_name=None, in_middleware=True):
        if in_middleware and not self._has_app_wide_limits():
            return  # decorated views check their own limits
        super()._check_request_limit(callable_name, in_middleware)

    def _Limiter__release_context(self, exc=None):
        if hasattr(request_ctx._get_current_object(), "_limiter_request_context"):
            super()._Limiter__release_context(exc)

    @staticmethod
    def _after_request(inject_headers):
        def inject_headers_if_limited(response):
            if hasattr(request_ctx._get_current_object(), "_limiter_request_context"):
                return inject_headers(response)
            return response

        return inject_headers_if_limited


# Flask-Limiter on the app's own Redis pool: counters are shared by every
# worker and host. get_remote_address is the client address after ProxyFix.
limiter = Limiter(key_func=get_remote_address)
