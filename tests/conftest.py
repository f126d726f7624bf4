import itertools
import signal

import pytest
import redis

from service import Settings, create_app
from tests.support.api import PASSWORD, ApiClient, new_username
from tests.support.nginx import Nginx
from tests.support.processes import Gunicorn, RedisServer, base_env
from tests.support.tls import LocalCA

# A shell without job control starts a background job (`scripts/test &`,
# nohup) with SIGINT and SIGQUIT ignored, and ignored signals are inherited:
# the scripts and servers the tests start would then ignore the Ctrl-C the
# tests send them. Start every child as a terminal would, with the defaults.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def app(redis_server):
    """The real app, built in this process from test settings (flaskr's way),
    for logic that needs no server; its Redis is the session's redis-server."""
    settings = Settings.from_env(base_env(redis_server.url, AUTH_RATE_LIMIT="1000 per minute",
                                          LOGIN_FAILURE_LIMIT="1000 per minute"))
    app = create_app(settings)
    yield app
    for client in app.extensions.values():
        if isinstance(client, redis.Redis):
            client.connection_pool.disconnect()


@pytest.fixture
def client(app):
    """Flask's test client for `app`: requests without sockets, cookies kept."""
    return app.test_client()


@pytest.fixture(scope="session")
def service(redis_server, tmp_path_factory):
    """One gevent worker of the test app, shared by the read-mostly tests."""
    env = base_env(redis_server.url, REDIS_MAX_CONNECTIONS=150, MAX_CONTENT_LENGTH=4096,
                   AUTH_RATE_LIMIT="1000 per minute", LOGIN_FAILURE_LIMIT="1000 per minute")
    server = Gunicorn(tmp_path_factory.mktemp("gunicorn"), env).start()
    yield server
    server.stop()


def made_in_test(make_one, close):
    """The body of a factory fixture (``yield from`` it): the test makes any
    number of things with make_one(...), each is closed afterwards."""
    made = []

    def make(*args, **kwargs):
        made.append(make_one(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        close(thing)


@pytest.fixture
def make_gunicorn(tmp_path):
    """Start extra gunicorn instances in a test; all are stopped afterwards."""
    numbers = itertools.count()
    yield from made_in_test(
        lambda env, **kwargs: Gunicorn(tmp_path / f"gunicorn-{next(numbers)}", env, **kwargs),
        Gunicorn.stop)


@pytest.fixture
def api(service):
    """Make API clients (each its own browser-like cookie jar) for the shared service."""
    yield from made_in_test(
        lambda base_url=None, **kwargs: ApiClient(base_url or service.url, **kwargs),
        ApiClient.close)


@pytest.fixture
def account(api):
    """A registered account: (username, password)."""
    username, password = new_username(), PASSWORD
    assert api().register(username, password).status_code == 201
    return username, password


@pytest.fixture
def nginx_front(redis_server, tmp_path):
    """Start the production shape: gunicorn (APP_ENV=production) on a unix
    socket behind nginx with a throwaway CA's certificate for app.test.
    ``gunicorn_options`` go to tests.support.processes.Gunicorn (app, root).
    Returns (nginx, gunicorn); both are stopped afterwards."""
    started = []

    def start(host="app.test", gunicorn_options=None, **env_overrides):
        ca = LocalCA(tmp_path / "ca")
        env = base_env(redis_server.url, APP_ENV="production", ALLOWED_HOSTS=host,
                       **env_overrides)
        gunicorn = Gunicorn(tmp_path / "gunicorn", env, bind=f"unix:{tmp_path}/gunicorn.sock",
                            **(gunicorn_options or {}))
        started.append(gunicorn.start())
        nginx = Nginx(tmp_path / "nginx", upstream=gunicorn.bind, certs=[ca.issue(host)],
                      ca_file=ca.cert_path, server_names=(host,))
        started.append(nginx)
        nginx.start()
        return nginx, gunicorn

    yield start
    for process in reversed(started):
        process.stop()
