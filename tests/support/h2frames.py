"""Raw HTTP/2 frames over TLS, for what no polite client sends (a stream reset
before its request is complete). HPACK literals only, no Huffman coding."""

from __future__ import annotations

import socket
import ssl
import struct

HEADERS, RST_STREAM, SETTINGS = 1, 3, 4
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def header_block(*pairs: tuple[str, str]) -> bytes:
    """Each pair as 'literal header field without indexing, new name'."""
    block = b""
    for name, value in pairs:
        name_b, value_b = name.encode(), value.encode()
        assert len(name_b) < 127 and len(value_b) < 127
        block += b"\x00" + bytes([len(name_b)]) + name_b + bytes([len(value_b)]) + value_b
    return block


def connect(port: int, server_name: str, context: ssl.SSLContext,
            source: str | None = None) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1 (optionally from another loopback
    address) that negotiated h2 and sent its preface."""
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5,
                                   source_address=(source, 0) if source else None)
    tls = context.wrap_socket(raw, server_hostname=server_name)
    assert tls.selected_alpn_protocol() == "h2"
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
    return tls
