import pytest

from tests.support.processes import Gunicorn, RedisServer, base_env


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service(redis_server, tmp_path_factory):
    """One gevent worker of the test app, shared by the read-mostly tests."""
    env = base_env(redis_server.url, REDIS_MAX_CONNECTIONS=150, MAX_CONTENT_LENGTH=4096)
    server = Gunicorn(tmp_path_factory.mktemp("gunicorn"), env).start()
    yield server
    server.stop()


@pytest.fixture
def make_gunicorn(tmp_path):
    """Start extra gunicorn instances in a test; all are stopped afterwards."""
    started = []

    def make(env, **kwargs):
        server = Gunicorn(tmp_path / f"gunicorn-{len(started)}", env, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
