"""Keep-alive HTTPS load through nginx, for tests that change things under it."""

from __future__ import annotations

import ssl
import threading
from typing import Self

from tests.support.nginx import _ResolvedHTTPS


class KeepAliveLoad:
    """Browser-like clients, each on one keep-alive HTTPS connection through
    nginx (reopened only when the server closes it), requesting ``path`` from
    ``with`` until its end. A status other than 200 or any exception is a
    failure; ``on_response(response, body)`` sees every response.

        with KeepAliveLoad(nginx, "app.test") as load:
            ...
        assert load.failures == [] and load.ok > 100
    """

    def __init__(self, nginx, host: str, path: str = "/", clients: int = 4, on_response=None):
        self.nginx, self.host, self.path = nginx, host, path
        self.context = ssl.create_default_context(cafile=str(nginx.ca_file))
        self.on_response = on_response or (lambda response, body: None)
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _client(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                conn = conn or _ResolvedHTTPS(self.host, self.nginx.https_port, timeout=10,
                                              context=self.context)
                conn.request("GET", self.path, headers={"Host": self.host})
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {response.status}")
                self.on_response(response, body)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                self.failures.append(repr(exc))
                conn = None
        if conn:
            conn.close()
