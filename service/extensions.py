"""Extension objects, unbound; create_app binds them with init_app."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect

# Flask-WTF: a well-kept CSRF implementation (HMAC-signed tokens bound to a
# secret kept in the server-side session), with form helpers for the pages.
csrf = CSRFProtect()

# Flask-Limiter on the app's own Redis pool: counters are shared by every
# worker and host. get_remote_address is the client address after ProxyFix.
limiter = Limiter(key_func=get_remote_address)
