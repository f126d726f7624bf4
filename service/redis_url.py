"""The ``redis+sentinel://`` form of REDIS_URL (standard library only, so
service/config.py can check it in gunicorn's master)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``"""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read the sentinel URL form; the part up to the service name is the one
    the ``limits`` library reads (its ``redis+sentinel://`` storage URI)."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL")
    parsed = urllib.parse.urlsplit(url)
    hosts = parsed.netloc.rpartition("@")[2]
    sentinels = []
    for location in hosts.split(","):
        part = urllib.parse.urlsplit(f"//{location.strip()}")
        if not part.hostname or not part.port:
            raise ValueError(f"sentinel {location!r} needs host:port")
        sentinels.append((part.hostname, part.port))
    path = [p for p in parsed.path.split("/") if p]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /<service name> or /<service name>/<db>")
    return SentinelURL(
        sentinels=tuple(sentinels),
        service_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=urllib.parse.unquote(parsed.username) if parsed.username else None,
        password=urllib.parse.unquote(parsed.password) if parsed.password else None,
    )
