"""Replicated Redis with Sentinel, and app hosts, inside a NetBed.

    redis = ReplicatedRedis(bed, ["r1", "r2", "r3"]).start()   # r1 primary, 2 replicas, 3 sentinels
    redis.url                                 # redis+sentinel://10.213.0.x:26380,.../mymaster/0
    redis.primary()                           # the host the sentinels name now
    app = AppHost(bed["app1"], directory, env).start()   # gunicorn on app1's address
    lb = BalancerHost(bed["lb"], directory, upstreams=[...], ...).start()   # nginx in front

Every Redis host runs redis-server with the service's settings
(deploy/redis/service.conf) plus deploy/redis/replication.conf, and a
redis-sentinel (Debian's package) monitoring the primary.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.netns import Host, NetBed
from tests.support.nginx import Nginx
from tests.support.processes import (
    REDIS_CONF,
    ROOT,
    Gunicorn,
    ManagedProcess,
    require_binary,
    wait_until,
)

REDIS_PORT = 6380
SENTINEL_PORT = 26380
APP_PORT = 8000
SERVICE = "mymaster"
REPLICATION_CONF = ROOT / "deploy" / "redis" / "replication.conf"
# A few seconds of silence before a sentinel calls the primary down: the
# failover window the tests measure.
DOWN_AFTER_MS = 2000


class ReplicatedRedis:
    def __init__(self, bed: NetBed, names: list[str], quorum: int = 2):
        self.bed = bed
        self.hosts = [bed[name] for name in names]
        self.quorum = quorum
        self.servers: dict[str, ManagedProcess] = {}
        self.sentinels: dict[str, ManagedProcess] = {}

    @property
    def url(self) -> str:
        locations = ",".join(f"{h.addr}:{SENTINEL_PORT}" for h in self.hosts)
        return f"redis+sentinel://{locations}/{SERVICE}/0"

    def _dir(self, host: Host) -> Path:
        directory = self.bed.directory / host.name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def start(self) -> ReplicatedRedis:
        primary = self.hosts[0]
        for host in self.hosts:
            self.start_server(host, replica_of=None if host is primary else primary)
        for host in self.hosts:
            self.start_sentinel(host, primary)
        self.wait_healthy(primary)
        return self

    def start_server(self, host: Host, replica_of: Host | None) -> ManagedProcess:
        binary = require_binary("redis-server", "redis-server")
        directory = self._dir(host)
        # Its own file: Sentinel makes the server rewrite it (CONFIG REWRITE).
        conf = directory / "redis.conf"
        conf.write_text(f"include {REDIS_CONF}\ninclude {REPLICATION_CONF}\n")
        argv = [binary, str(conf), "--port", str(REDIS_PORT), "--bind", host.addr, "127.0.0.1",
                "--protected-mode", "no", "--dir", str(directory), "--save", "",
                "--logfile", str(directory / "redis.log")]
        if replica_of:
            argv += ["--replicaof", replica_of.addr, str(REDIS_PORT)]
        server = host.spawn(ManagedProcess(f"redis-server on {host.name}",
                                           directory / "redis.log"), argv,
                            stdout=directory / "redis.out")
        server.wait_ready(lambda: self.cli(host, "PING") == "PONG", 10,
                          f"redis-server on {host.name}")
        self.servers[host.name] = server
        return server

    def start_sentinel(self, host: Host, primary: Host) -> None:
        directory = self._dir(host)
        conf = directory / "sentinel.conf"  # sentinel rewrites its own file
        conf.write_text(
            f"port {SENTINEL_PORT}\nbind {host.addr} 127.0.0.1\nprotected-mode no\n"
            f"dir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} {primary.addr} {REDIS_PORT} {self.quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        binary = require_binary("redis-sentinel", "redis-sentinel")
        sentinel = host.spawn(ManagedProcess(f"redis-sentinel on {host.name}",
                                             directory / "sentinel.log"), [binary, str(conf)],
                              stdout=directory / "sentinel.out")
        sentinel.wait_ready(lambda: self.cli(host, "PING", port=SENTINEL_PORT) == "PONG", 10,
                            f"redis-sentinel on {host.name}")
        self.sentinels[host.name] = sentinel

    def cli(self, host: Host, *command: str, port: int = REDIS_PORT, at: Host | None = None,
            timeout: float = 5) -> str:
        """redis-cli run inside `host`, talking to `at` (default: itself)."""
        target = (at or host).addr
        return host.run(require_binary("redis-cli", "redis-tools"), "-h", target,
                        "-p", str(port), *command, timeout=timeout).strip()

    def info(self, host: Host, section: str = "replication") -> dict[str, str]:
        lines = self.cli(host, "INFO", section).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def primary(self, asking: Host | None = None) -> Host:
        """The host a sentinel names as the primary now."""
        asking = asking or next(h for h in self.hosts if h.name in self.sentinels)
        addr = self.cli(asking, "SENTINEL", "get-master-addr-by-name", SERVICE,
                        port=SENTINEL_PORT).split()[0]
        return next(h for h in self.hosts if h.addr == addr)

    def wait_healthy(self, primary: Host, timeout: float = 30) -> None:
        """Until the primary has every other server as an online replica and
        every sentinel names it and knows the others."""
        replicas = len(self.servers) - 1
        others = len(self.sentinels) - 1

        def healthy():
            info = self.info(primary)
            online = [v for k, v in info.items() if k.startswith("slave") and "online" in v]
            if info.get("role") != "master" or len(online) < replicas:
                raise AssertionError(f"{primary.name}: {info}")
            for host in [self.bed[name] for name in self.sentinels]:
                state = self.cli(host, "SENTINEL", "master", SERVICE, port=SENTINEL_PORT).split()
                fields = dict(zip(state[::2], state[1::2], strict=False))
                if (fields.get("ip") != primary.addr or int(fields["num-slaves"]) < replicas
                        or int(fields["num-other-sentinels"]) < others
                        or "down" in fields.get("flags", "")):
                    raise AssertionError(f"sentinel on {host.name}: {fields}")
            return True

        wait_until(healthy, timeout, f"replication and sentinels around {primary.name}",
                   interval=0.2)


class AppHost(Gunicorn):
    """gunicorn (gevent workers, the project's gunicorn.conf.py) bound to a
    bed host's address, started inside that host."""

    def __init__(self, host: Host, directory: Path, env: dict[str, str], **kwargs):
        self.host = host
        super().__init__(directory, env, bind=f"{host.addr}:{APP_PORT}", **kwargs)

    @property
    def url(self) -> str:
        return f"http://{self.bind}"

    def launch(self):
        argv = [self.binary, "--config", str(ROOT / "gunicorn.conf.py"), *self.extra_args,
                self.app]
        return self.host.spawn(self, argv, stdout=self.stdout_path, stderr=self.stderr_path,
                               cwd=ROOT, env=self.env)

    def healthy(self) -> bool:
        code = self.host.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             "-m", "2", self.url + "/healthz", check=False)
        return code == "200"


class BalancerHost(Nginx):
    """nginx rendered by deploy/nginx/render, listening on a bed host's
    address (HTTP 80, HTTPS 443 for server_names[0], an alias of the host in
    the bed's hosts files) in front of app hosts' address:port upstreams."""

    def __init__(self, host: Host, directory: Path, **kwargs):
        self.host = host
        super().__init__(directory, listen=host.addr, **kwargs)
        self.http_port, self.https_port = 80, 443

    def base_url(self) -> str:
        return f"https://{self.server_names[0]}"

    def render(self) -> str:
        # Inside the host: nginx -t binds the listen addresses.
        return self.host.run(*self.render_command())

    def start(self, timeout: float = 10) -> BalancerHost:
        self.render()
        self.host.spawn(self, [self.binary, "-p", str(self.prefix), "-c",
                               str(self.conf_dir / "nginx.conf"), "-e", str(self.log_path),
                               "-g", "daemon off;"])

        def up():
            return self.host.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 "--cacert", str(self.ca_file), "-m", "2",
                                 self.base_url() + "/healthz", check=False) == "200"

        self.wait_ready(up, timeout, f"nginx on {self.host.name}")
        return self
